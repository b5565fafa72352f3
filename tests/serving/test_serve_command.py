"""`mlops serve` as a user starts it (two uvicorn workers on a local model folder), and the
serving image's uvicorn factory: both answer, stop cleanly and log one JSON object per line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest

from serving.bundle import Bundle
from tests.processes import clean_env, free_port, mlops_serve, serving_process

from .conftest import as_requests


@pytest.mark.slow
def test_mlops_serve_with_two_workers_answers_and_stops_cleanly(
    model_folder: Bundle, december: pd.DataFrame, tmp_path: Path
) -> None:
    args = ("--model-dir", str(model_folder.folder), "--workers", "2")
    options = ("--home", str(tmp_path))
    env = clean_env(MLOPS_LOG_FORMAT="json")
    with mlops_serve(*args, options=options, env=env, ready_within_s=120) as served:
        served.every_worker_ready(2)
        body = {"flights": as_requests(december.head(2))}
        answers = [httpx.post(f"{served.base}/predict", json=body) for _ in range(6)]
        assert {a.status_code for a in answers} == {200}, [a.text for a in answers]
        assert answers[0].json()["model"]["version"] == model_folder.version
        docs = httpx.get(f"{served.base}/openapi.json").json()
        assert "/predict" in docs["paths"] and "/v2/models/{name}/infer" in docs["paths"]
    assert served.returncode == 0, served.output
    records = _json_records(served.output)  # the parent's lines, uvicorn's, each worker's
    loads = {r["pid"] for r in records if r["message"].startswith("loaded ")}
    assert len(loads) == 2, served.output  # each worker loaded the model, and said so
    assert any(r["message"].startswith("serving ") for r in records)


def _json_records(output: str) -> list[dict]:
    """Every line a JSON object (a container's log collector reads one per line)."""
    lines = [line for line in output.splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}\nin:\n{output[-3000:]}")
    return records


def test_the_serving_images_factory_logs_its_model_load_as_json(
    model_folder: Bundle, tmp_path: Path
) -> None:
    """What the serving image runs (`uvicorn mlops.serve_app:create --factory`): no CLI
    callback configures its logging, the factory does."""
    port = free_port()
    user_home = tmp_path / "user-home"
    env = clean_env(
        HOME=str(user_home),
        MLOPS_HOME=str(tmp_path),
        MLOPS_SERVE__MODEL_DIR=str(model_folder.folder),
        MLOPS_LOG_FORMAT="json",
    )
    command = [sys.executable, "-m", "uvicorn", "mlops.serve_app:create", "--factory"]
    command += ["--port", str(port), "--log-level", "warning"]
    with serving_process(command, port, env=env, ready_within_s=120) as served:
        pass
    output = served.output
    loads = [r for r in _json_records(output) if r["message"].startswith("loaded ")]
    assert len(loads) == 1, output
    assert loads[0]["logger"] == "serving.runtime" and loads[0]["pid"] == served.process.pid
    assert f"v{model_folder.version}" in loads[0]["message"]
    # nothing in the user's home (onnxruntime's device id goes under MLOPS_HOME, if anywhere)
    assert [p for p in user_home.rglob("*") if p.is_file()] == []
