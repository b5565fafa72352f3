"""The server against a real `mlflow server` that goes away, comes back, cuts downloads and
stalls: live at once, ready when MLflow returns, no version refused for a fault of MLflow's,
the reason reported in words, and /admin/reload never stuck behind a poll."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serving.bundle import BUNDLE_FILE, CONTRACT, Bundle
from tests.processes import MlflowServer, clean_env, free_port, mlops_serve

from .conftest import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

NAME = "flight-delay"
TOKEN = "t0ken"


class Proxy:
    """A TCP proxy in front of MLflow that the test takes down (connections refused), brings
    up, makes cut every response after `cut_after` bytes, or stall (requests never answered)."""

    def __init__(self, target: int, cut_after: int = 256 * 1024) -> None:
        self.target, self.cut_after = target, cut_after
        self.port = free_port()
        self.mode = "down"
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []

    def set(self, mode: str) -> None:
        self.mode = mode
        if mode == "down":
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            for conn in self._open:
                conn.close()
            self._open.clear()
        elif self._listener is None:
            self._listener = socket.create_server(("127.0.0.1", self.port), reuse_port=True)
            threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if self.mode == "stall":  # read the request, never answer
                self._open.append(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:  # MLflow itself is down: so is the connection
                client.close()
                continue
            self._open += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, answers: bool) -> None:
        sent = 0
        try:
            while chunk := source.recv(65536):
                sent += len(chunk)
                if answers and self.mode == "cut" and sent > self.cut_after:
                    break  # mid-download: the connection drops
                sink.sendall(chunk)
        except OSError:
            pass
        for end in (source, sink):
            end.close()


def _register(uri: str, folder: Path) -> str:
    """The model folder as a new registered version in the MLflow server at `uri`."""
    from mlflow import MlflowClient

    client = MlflowClient(uri, uri)
    experiment = client.get_experiment_by_name("faults") or client.get_experiment(
        client.create_experiment("faults")
    )
    run = client.create_run(experiment.experiment_id)
    staged = folder.parent / f"upload-{run.info.run_id}"
    shutil.copytree(folder, staged, ignore=shutil.ignore_patterns(CONTRACT, BUNDLE_FILE))
    client.log_artifacts(run.info.run_id, str(staged), "model")
    client.log_artifacts(run.info.run_id, str(folder / CONTRACT), CONTRACT)
    client.set_terminated(run.info.run_id)
    if not client.search_registered_models(f"name = '{NAME}'"):
        client.create_registered_model(NAME)
    version = client.create_model_version(
        NAME, f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    ).version
    client.set_registered_model_alias(NAME, "champion", version)
    return str(version)


@pytest.fixture
def mlflow(tmp_path: Path) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path / "mlflow")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_mlflow_down_cut_stalled_and_restarted(
    mlflow: MlflowServer, model_folder: Bundle, tmp_path: Path
) -> None:
    proxy, direct = Proxy(mlflow.port), mlflow.uri
    first = _register(direct, model_folder.folder)
    env = clean_env(
        MLOPS_HOME=str(tmp_path / "home"),
        MLFLOW_TRACKING_URI=f"http://127.0.0.1:{proxy.port}",
        MLOPS_SERVE__POLL_INTERVAL_S="2",
        MLOPS_SERVE__ADMIN_TOKEN=TOKEN,
        MLOPS_SERVE__MLFLOW_TIMEOUT_S="5",
    )
    admin = {"Authorization": f"Bearer {TOKEN}"}
    with mlops_serve(env=env, until="live", ready_within_s=60) as served:
        api = httpx.Client(base_url=served.base, timeout=30)
        # MLflow unreachable at start: live at once, not ready, and the reason in words
        assert api.get("/v2/health/ready").status_code == 503
        eventually(lambda: "unreachable" in api.get("/model").text, 10, "reason reported")
        assert "since" in api.get("/model").json()["detail"]
        proxy.set("up")
        eventually(lambda: api.get("/v2/health/ready").status_code == 200, 30, "ready")
        assert api.get("/model").json()["version"] == first

        # a new champion whose download is cut mid-way: retried, never refused
        proxy.set("cut")
        second = _register(direct, model_folder.folder)
        eventually(lambda: api.get("/model").json()["problem"] is not None, 30, "cut seen")
        assert api.get("/model").json()["version"] == first  # the old one keeps serving
        proxy.set("up")
        eventually(lambda: api.get("/model").json()["version"] == second, 30, "second loaded")
        assert api.get("/model").json()["problem"] is None

        # a poll stuck on a stalled MLflow: /admin/reload answers at once, busy
        proxy.set("down")
        proxy.set("stall")
        time.sleep(2.5)  # the next poll is in flight, waiting for an answer
        started = time.monotonic()
        busy = api.post("/admin/reload", headers=admin)
        assert time.monotonic() - started < 1, "/admin/reload waited behind the poll"
        assert busy.status_code == 409 and busy.json()["outcome"] == "busy"

        # the MLflow process itself stopped, then started again
        proxy.set("down")
        proxy.set("up")
        mlflow.stop()
        eventually(lambda: "unreachable" in api.get("/model").text, 30, "outage reported")
        assert api.get("/v2/health/ready").status_code == 200  # still serving the second
        mlflow.start()
        eventually(lambda: api.get("/model").json()["problem"] is None, 30, "recovered")
        metrics = api.get("/metrics").text
    assert 'mlops_model_reloads_total{outcome="refused"}' not in metrics
    assert served.live_after_s < 5, served.live_after_s  # the interpreter's start included
