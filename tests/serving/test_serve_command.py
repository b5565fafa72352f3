"""`mlops serve` as a user starts it: two uvicorn workers on a local model folder."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from serving.bundle import Bundle

from .conftest import as_requests


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_mlops_serve_with_two_workers_answers_and_stops_cleanly(
    model_folder: Bundle, december: pd.DataFrame, tmp_path: Path
) -> None:
    port = _free_port()
    command = [sys.executable, "-m", "mlops", "--home", str(tmp_path), "serve"]
    command += ["--model-dir", str(model_folder.folder), "--port", str(port), "--workers", "2"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read().decode()
            try:
                if httpx.get(f"{base}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "not ready in time"
            time.sleep(0.5)
        body = {"flights": as_requests(december.head(2))}
        answers = [httpx.post(f"{base}/predict", json=body) for _ in range(6)]
        assert {a.status_code for a in answers} == {200}
        assert answers[0].json()["model"]["version"] == model_folder.version
        docs = httpx.get(f"{base}/openapi.json").json()
        assert "/predict" in docs["paths"] and "/v2/models/{name}/infer" in docs["paths"]
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=60)
    assert server.returncode == 0, output.decode()
