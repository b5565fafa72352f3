"""Hot swaps under load on a real uvicorn server, and models that must be refused."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from pipelines.spec import sha256_of
from serving.app import create_app
from serving.bundle import Bundle
from serving.config import ServeConfig
from serving.manager import FolderSource, RegistrySource
from training.config import GateConfig, TrackingConfig
from training.registry import register as register_version

from .conftest import Champion, Server, as_requests, ready_client

TOKEN = {"Authorization": "Bearer t0ken"}


async def _load(base: str, body: dict, stop: threading.Event, out: list) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:

        async def worker() -> None:
            while not stop.is_set():
                response = await client.post("/predict", json=body)
                version = (
                    response.json()["model"]["version"] if response.status_code == 200 else None
                )
                out.append((response.status_code, version))

        await asyncio.gather(*(worker() for _ in range(8)))


@pytest.mark.slow
def test_ten_hot_swaps_under_load_drop_no_request(
    champion: Champion, december: pd.DataFrame, tmp_path: Path
) -> None:
    name = "flight-delay-swaps"
    client = TrackingConfig(champion.home).client()

    def register() -> str:
        version = register_version(client, champion.run_id, GateConfig(model_name=name))
        client.set_registered_model_alias(name, "champion", version)
        return version

    first = register()
    source = RegistrySource(name, "champion", client, tmp_path)
    config = ServeConfig(poll_interval_s=0, admin_token="t0ken")
    body = {"flights": as_requests(december.head(3))}
    stop, answers = threading.Event(), []
    with Server(create_app(config, source)) as base:
        load = threading.Thread(target=asyncio.run, args=(_load(base, body, stop, answers),))
        load.start()
        versions = [first]
        try:
            for _ in range(10):
                versions.append(register())
                reload = httpx.post(f"{base}/admin/reload", headers=TOKEN, timeout=120)
                assert reload.status_code == 200 and reload.json()["outcome"] == "loaded"
                seen = len(answers)
                while len(answers) < seen + 20:  # some traffic on every version
                    time.sleep(0.01)
        finally:
            stop.set()
            load.join(timeout=60)
        metrics = httpx.get(f"{base}/metrics").text
    statuses = {status for status, _ in answers}
    assert statuses == {200}, f"failed requests: {[a for a in answers if a[0] != 200][:5]}"
    assert {version for _, version in answers} == set(versions)
    assert 'mlops_model_reloads_total{outcome="loaded"} 11.0' in metrics


@pytest.fixture
def served_folder(model_folder: Bundle, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(model_folder.folder, folder)
    return folder


def _as_new_version(folder: Path, version: str) -> None:
    about = json.loads((folder / "bundle.json").read_text())
    (folder / "bundle.json").write_text(json.dumps(about | {"version": version}))


def test_corrupt_versions_are_refused_and_the_old_one_keeps_serving(
    served_folder: Path, december: pd.DataFrame
) -> None:
    config = ServeConfig(poll_interval_s=0, admin_token="t0ken")
    body = {"flights": as_requests(december.head(2))}
    with ready_client(create_app(config, FolderSource(served_folder))) as client:
        before = client.post("/predict", json=body).json()
        old = before["model"]["version"]

        _as_new_version(served_folder, "tampered")
        onnx = served_folder / "model.onnx"
        data = bytearray(onnx.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte
        onnx.write_bytes(bytes(data))
        refused = client.post("/admin/reload", headers=TOKEN)
        assert refused.status_code == 409
        assert "sha256 of model.onnx" in refused.json()["detail"]
        assert client.post("/predict", json=body).json() == before

        _as_new_version(served_folder, "broken")
        onnx.write_bytes(b"not an onnx graph")
        mlmodel = served_folder / "MLmodel"
        recorded = mlmodel.read_text()
        digest = recorded.split("onnx_sha256: ")[1].split()[0]
        mlmodel.write_text(recorded.replace(digest, sha256_of(onnx)))
        refused = client.post("/admin/reload", headers=TOKEN)
        assert refused.status_code == 409
        assert "not a valid ONNX model" in refused.json()["detail"]
        after = client.post("/predict", json=body).json()
        assert after["model"]["version"] == old and after == before
        metrics = client.get("/metrics").text
        assert 'mlops_model_reloads_total{outcome="refused"} 2.0' in metrics


def test_shutdown_drains_the_requests_in_flight(
    model_folder: Bundle, december: pd.DataFrame
) -> None:
    # a long batching wait keeps the requests inside the server when the shutdown starts
    config = ServeConfig(poll_interval_s=0, max_wait_ms=800, max_batch=1_000)
    body = {"flights": as_requests(december.head(1))}
    server = Server(create_app(config, FolderSource(model_folder.folder)))
    base = server.__enter__()

    async def in_flight() -> list[int]:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            requests = [asyncio.create_task(client.post("/predict", json=body)) for _ in range(5)]
            await asyncio.sleep(0.3)
            server.server.should_exit = True  # what SIGTERM does
            return [(await r).status_code for r in requests]

    try:
        statuses = asyncio.run(in_flight())
    finally:
        server.__exit__()
    assert statuses == [200] * 5


def test_the_server_follows_the_alias_by_itself(champion: Champion, tmp_path: Path) -> None:
    name = "flight-delay-polled"
    client = TrackingConfig(champion.home).client()

    def register() -> str:
        version = register_version(client, champion.run_id, GateConfig(model_name=name))
        client.set_registered_model_alias(name, "champion", version)
        return version

    first = register()
    source = RegistrySource(name, "champion", client, tmp_path)
    with ready_client(create_app(ServeConfig(poll_interval_s=0.2), source)) as api:
        assert api.get("/model").json()["version"] == first
        second = register()
        deadline = time.monotonic() + 60
        while api.get("/model").json()["version"] != second:
            assert time.monotonic() < deadline, "the new champion was never picked up"
            time.sleep(0.2)
        assert api.get("/model").json()["last_reload"]["outcome"] == "loaded"
