"""A clean stop: SIGTERM to the real `mlops serve` under load, with a reload in flight, ends
every request the server has read and exits 0 within the container's grace period; and the
image's and `mlops serve`'s graceful timeouts both fit inside that period."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from mlops.cli import app
from serving.bundle import ONNX_FILE, Bundle
from serving.config import ServeConfig
from tests.load import OpenLoop, Outcome, post, request_once, run
from tests.processes import Served, mlops_serve

from .conftest import as_requests, eventually

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "stop-test-token"
# What the container gets between SIGTERM and SIGKILL (docker-compose.yml); the server must be
# gone by then, lifespan shutdown and interpreter exit included.
GRACE_S = 15.0
READ_WITHIN_S = 0.1  # a request sent this long before SIGTERM has been read by the server


def _duration_s(value: str) -> float:
    """Compose's durations as the api uses them: "15s", "1m30s"."""
    seconds, number = 0.0, ""
    for char in value:
        if char.isdigit() or char == ".":
            number += char
        else:
            seconds += float(number) * {"s": 1, "m": 60, "h": 3600}[char]
            number = ""
    return seconds


def _dockerfile_cmd(dockerfile: Path) -> list[str]:
    text = dockerfile.read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.startswith("CMD "))
    return json.loads(line.removeprefix("CMD "))


def test_the_graceful_timeouts_fit_inside_the_containers_grace() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for service in ("api", "api-gpu"):
        grace = _duration_s(compose["services"][service]["stop_grace_period"])
        assert grace == GRACE_S, service
    cmd = _dockerfile_cmd(ROOT / "infra" / "Dockerfile.serve")
    assert cmd[:2] == ["mlops", "serve"], "the image stops as `mlops serve` does (exit 0)"
    assert "--timeout-graceful-shutdown" not in cmd, "one home for the timeout: ServeConfig"
    # the drain (readiness 503 while the edge takes the API out), the graceful timeout, then
    # the lifespan finishes the queue (bounded by max_queue_rows) and the process exits
    drain_s = float(compose["services"]["api"]["environment"]["MLOPS_SERVE__DRAIN_S"])
    assert drain_s >= 2, "the edge checks readiness every second: a drain must outlast a check"
    assert drain_s + ServeConfig().graceful_shutdown_s + 3 <= GRACE_S


def test_mlops_serve_passes_the_graceful_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the command sets these for its workers: set here, they are restored after the test
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    monkeypatch.setenv("MLOPS_SERVE__WORKERS", "1")
    monkeypatch.setenv("MLOPS_SERVE__MODEL_DIR", "")
    monkeypatch.setenv("MLOPS_SERVE__GRACEFUL_SHUTDOWN_S", "7.5")
    started: dict = {}
    monkeypatch.setattr("uvicorn.run", lambda *args, **kwargs: started.update(kwargs))
    result = CliRunner().invoke(
        app, ["--home", str(tmp_path), "serve", "--model-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert started["timeout_graceful_shutdown"] == 7.5


@dataclass(frozen=True)
class Stop:
    sigterm_at: float  # time.monotonic()
    exited_after_s: float | None  # None: still running GRACE_S after SIGTERM
    load: list[Outcome]
    reload: Outcome


def _reload_request() -> bytes:
    return post("/admin/reload", {"force": True}, {"Authorization": f"Bearer {TOKEN}"})


def _wait(process: subprocess.Popen, timeout_s: float) -> float | None:
    started = time.monotonic()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None
    return time.monotonic() - started


def stop_under_load(
    served: Served, request: bytes, rate: float, before_stop: asyncio.Future | None = None
) -> Stop:
    """Open-loop load at `rate` for 4 s; after 1 s a forced reload, and SIGTERM 0.3 s into it
    (a reload of the test model takes about 1.5 s here)."""
    host, port = "127.0.0.1", served.port

    async def main() -> Stop:
        load = OpenLoop(host, port, request, max_connections=256)
        await load.warm(32)
        firing = asyncio.create_task(load.run(rate, 4.0))  # on through the stop
        await asyncio.sleep(1.0)
        reload = asyncio.create_task(request_once(host, port, _reload_request()))
        await asyncio.sleep(0.3)
        sigterm_at = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        exited = await loop.run_in_executor(None, _wait, served.process, GRACE_S)
        outcomes = await firing
        load.close()
        try:
            reloaded = await asyncio.wait_for(reload, 5.0)
        except TimeoutError:  # neither answered nor closed
            reloaded = Outcome(sigterm_at)
        return Stop(sigterm_at, exited, outcomes, reloaded)

    return run(main())


def check(stop: Stop, reload_answers: tuple[int, ...] = (200, 503)) -> None:
    assert stop.exited_after_s is not None, f"still running {GRACE_S} s after SIGTERM"
    # the reload either finished while uvicorn drained (200) or was refused as shutting down
    assert stop.reload.status in reload_answers, f"the reload in flight: {stop.reload.status}"
    answered = {o.status for o in stop.load} - {0}
    assert answered == {200}, f"a request the server read failed: {answered}"
    read = [o for o in stop.load if o.due < stop.sigterm_at - READ_WITHIN_S]
    unanswered = sum(o.status != 200 for o in read)
    assert unanswered == 0, f"{unanswered} of {len(read)} requests sent before SIGTERM failed"
    # 0 (no answer) only for requests the server never read: sent as it closed its sockets
    late = [o for o in stop.load if o.status == 0]
    assert all(o.due >= stop.sigterm_at - READ_WITHIN_S for o in late)


@pytest.fixture(scope="module")
def flight_request(december: pd.DataFrame) -> bytes:
    return post("/predict", {"flights": as_requests(december.head(1))})


def _env() -> dict[str, str]:
    return os.environ | {"MLOPS_SERVE__ADMIN_TOKEN": TOKEN, "MLOPS_SERVE__POLL_INTERVAL_S": "0"}


def test_sigterm_under_load_with_a_reload_in_flight(
    model_folder: Bundle, flight_request: bytes, tmp_path: Path
) -> None:
    args = ("--model-dir", str(model_folder.folder))
    with mlops_serve(*args, options=("--home", str(tmp_path)), env=_env()) as served:
        stop = stop_under_load(served, flight_request, rate=500)
    check(stop)
    assert served.returncode == 0, served.output
    assert stop.reload.status == 200, "uvicorn drains the reload like any request"


@pytest.mark.slow
def test_sigterm_with_a_reload_stuck_reading_the_model(
    model_folder: Bundle, flight_request: bytes, tmp_path: Path
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(model_folder.folder, folder)
    args = ("--model-dir", str(folder))
    with mlops_serve(*args, options=("--home", str(tmp_path)), env=_env()) as served:
        onnx = folder / ONNX_FILE  # a model being replaced on a stalled mount: reads block
        onnx.unlink()
        os.mkfifo(onnx)
        try:
            stop = stop_under_load(served, flight_request, rate=200)
        finally:
            _unblock(onnx)  # so that the process can end either way
    check(stop, reload_answers=(200, 409, 503))  # 409: busy, behind the poll stuck reading
    assert served.returncode == 0, served.output


def _unblock(fifo: Path) -> None:
    """Give a reader blocked on the FIFO its end of file."""
    try:
        writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # no reader left
        return
    os.close(writer)


def test_sigterm_with_a_drain_is_not_ready_and_still_serves(
    model_folder: Bundle, flight_request: bytes, tmp_path: Path
) -> None:
    """With MLOPS_SERVE__DRAIN_S (the stack sets it), SIGTERM first turns readiness to 503, so
    that the edge takes the API out, while everything else is answered as before; the stop
    itself starts after the drain, and a second SIGTERM skips the rest of it."""
    args = ("--model-dir", str(model_folder.folder))
    env = _env() | {"MLOPS_SERVE__DRAIN_S": "2"}
    with mlops_serve(*args, options=("--home", str(tmp_path)), env=env) as served:
        served.process.send_signal(signal.SIGTERM)
        sigterm_at = time.monotonic()
        eventually(lambda: _ready(served) == 503, 1.0, "not ready after SIGTERM")
        answer = httpx.post(
            f"{served.base}/predict",
            content=flight_request.split(b"\r\n\r\n", 1)[1],
            headers={"Content-Type": "application/json"},
        )
        assert answer.status_code == 200, answer.text
        assert httpx.get(f"{served.base}/v2/health/live").status_code == 200
        assert time.monotonic() - sigterm_at < 1.5, "the checks took most of the drain"
        assert _wait(served.process, GRACE_S) is not None, f"running {GRACE_S} s after SIGTERM"
        stopped_after = time.monotonic() - sigterm_at
    assert stopped_after > 1.9, f"stopped {stopped_after:.1f} s after SIGTERM, within the drain"
    assert served.returncode == 0, served.output
    assert "stopping in 2.0 s" in served.output


def test_a_second_sigterm_ends_the_drain(model_folder: Bundle, tmp_path: Path) -> None:
    args = ("--model-dir", str(model_folder.folder))
    env = _env() | {"MLOPS_SERVE__DRAIN_S": "30"}
    with mlops_serve(*args, options=("--home", str(tmp_path)), env=env) as served:
        served.process.send_signal(signal.SIGTERM)
        eventually(lambda: _ready(served) == 503, 1.0, "not ready after SIGTERM")
        served.process.send_signal(signal.SIGTERM)
        exited = _wait(served.process, 10)
    assert exited is not None, "a second SIGTERM did not end a 30 s drain"
    assert served.returncode == 0, served.output


def _ready(served: Served) -> int:
    return httpx.get(f"{served.base}/v2/health/ready").status_code
