"""Hot swaps under load on a real uvicorn server, and models that must be refused."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pandas as pd
import pytest

from pipelines.layout import DataLayout
from pipelines.spec import sha256_of
from serving.app import create_app
from serving.bundle import Bundle
from serving.config import ServeConfig
from serving.manager import FolderSource, RegistrySource
from tests.load import collect, open_loop_process, p99
from tests.processes import clean_env, mlops_serve
from training.config import GateConfig, TrackingConfig
from training.registry import register as register_version
from training.train import train, train_trees

from .conftest import SMALL, TREES, Champion, Server, as_requests, ready_client

TOKEN = {"Authorization": "Bearer t0ken"}


SWAPS, EVERY_S = 30, 4.0
RATE = 40  # requests a second, each of 3 flights: well inside capacity, so latency is the swaps'


@pytest.fixture(scope="module")
def narrower_run(champion: Champion, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A genuinely different model: other weights, and a feature spec one feature narrower
    (a swap changes the width of the inputs, and of the drift monitor's window)."""
    home = tmp_path_factory.mktemp("narrower")
    shutil.copytree(champion.home / "data", home / "data")
    layout = DataLayout(home)
    spec = json.loads(layout.spec.read_text())
    spec["numerical"] = spec["numerical"][:-1]
    layout.spec.write_text(json.dumps(spec))
    model, fit = SMALL
    tracking = TrackingConfig(champion.home)  # the champion's registry: both models in one
    result = train(layout, tracking, model, replace(fit, seed=1))
    assert result is not None
    return result.run_id


@pytest.fixture(scope="module")
def trees_run(champion: Champion) -> str:
    """LightGBM trees on the champion's table, in its registry: another framework's model."""
    pytest.importorskip("lightgbm", reason="the `lightgbm` extra: pip install -e '.[lightgbm]'")
    tracking = TrackingConfig(champion.home)
    return train_trees(DataLayout(champion.home), tracking, TREES).run_id


@pytest.fixture(scope="module")
def jax_run(champion: Champion) -> str:
    """The network trained in JAX on the champion's table, in its registry."""
    pytest.importorskip("jax2onnx", reason="the `jax` extra: pip install -e '.[jax]'")
    from training.train import train_jax

    tracking = TrackingConfig(champion.home)
    return train_jax(DataLayout(champion.home), tracking, *SMALL).run_id


@pytest.mark.slow
def test_thirty_hot_swaps_of_two_different_models_under_open_loop_load_on_two_workers(
    champion: Champion, narrower_run: str, december: pd.DataFrame, tmp_path: Path
) -> None:
    """`mlops serve --workers 2` following the alias by itself while it moves 30 times between
    two models of different widths, under a fixed arrival rate: no request fails (a transport
    error counts), every answer names one of the two, and p99 during the swaps stays within
    twice the steady p99. Each worker (its pid in /model) follows within one poll interval."""
    _swaps_under_load(champion, narrower_run, "flight-delay-swaps", SWAPS, december, tmp_path)


@pytest.mark.slow
def test_hot_swaps_between_the_network_and_lightgbm_trees_under_load(
    champion: Champion, trees_run: str, december: pd.DataFrame, tmp_path: Path
) -> None:
    """The same, between a torch version and a LightGBM version: the unchanged server swaps
    frameworks as it swaps weights."""
    _swaps_under_load(champion, trees_run, "flight-delay-frameworks", 10, december, tmp_path)


@pytest.mark.slow
def test_hot_swaps_between_the_network_in_pytorch_and_in_jax_under_load(
    champion: Champion, jax_run: str, december: pd.DataFrame, tmp_path: Path
) -> None:
    """The same, between a torch version and a JAX version."""
    _swaps_under_load(champion, jax_run, "flight-delay-jax-swaps", 10, december, tmp_path)


def _swaps_under_load(
    champion: Champion,
    other_run: str,
    name: str,
    swaps: int,
    december: pd.DataFrame,
    tmp_path: Path,
) -> None:
    client = TrackingConfig(champion.home).client()
    gate = GateConfig(model_name=name)
    versions = [register_version(client, run, gate) for run in (champion.run_id, other_run)]
    client.set_registered_model_alias(name, "champion", versions[0])
    env = {
        **clean_env(),
        "MLOPS_HOME": str(tmp_path),
        "MLFLOW_TRACKING_URI": champion.tracking_uri,
        "MLOPS_GATE__MODEL_NAME": name,
        "MLOPS_SERVE__POLL_INTERVAL_S": "1",
    }
    body = {"flights": as_requests(december.head(3))}
    with mlops_serve("--workers", "2", env=env) as served:
        served.every_worker_ready(2)
        steady = collect(open_loop_process(served.base, "/predict", body, RATE, 10))
        load = open_loop_process(served.base, "/predict", body, RATE, EVERY_S * swaps + 5)
        for i in range(1, swaps + 1):
            time.sleep(EVERY_S)
            client.set_registered_model_alias(name, "champion", versions[i % 2])
        swapping = collect(load)
        final = versions[swaps % 2]
        deadline = time.monotonic() + 30
        seen: dict[int, str] = {}
        while set(seen.values()) != {final} or len(seen) < 2:
            assert time.monotonic() < deadline, f"workers did not all follow: {seen}"
            info = httpx.get(f"{served.base}/model").json()  # a new connection: any worker
            seen[info["pid"]] = info["version"]
        metrics = [httpx.get(f"{served.base}/metrics").text for _ in range(4)]
    logging.getLogger(__name__).warning(  # benchmarks/RESULTS.md quotes it
        "hot swaps (%s): %d requests at %d/s, p99 steady %.1f ms, during %d swaps %.1f ms (%.2fx)",
        name,
        len(swapping),
        RATE,
        1000 * p99(steady),
        swaps,
        1000 * p99(swapping),
        p99(swapping) / p99(steady),
    )
    failures = [shot for shot in steady + swapping if shot.status != 200]
    assert not failures, f"{len(failures)} failed: {failures[:5]}"
    assert {shot.version for shot in swapping} == set(versions)
    assert p99(swapping) <= 2 * p99(steady), (p99(swapping), p99(steady))
    assert all('mlops_model_reloads_total{outcome="refused"}' not in text for text in metrics)


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
    uri = champion.tracking_uri
    source = RegistrySource(name, "champion", uri, uri, tmp_path)
    with ready_client(create_app(ServeConfig(poll_interval_s=0.2), source)) as api:
        assert api.get("/model").json()["version"] == first
        second = register()
        deadline = time.monotonic() + 60
        while api.get("/model").json()["version"] != second:
            assert time.monotonic() < deadline, "the new champion was never picked up"
            time.sleep(0.2)
        assert api.get("/model").json()["last_reload"]["outcome"] == "loaded"
