"""`mlops serve` as a user starts it: two uvicorn workers on a local model folder."""

from __future__ import annotations

from pathlib import Path

import httpx
import pandas as pd
import pytest

from serving.bundle import Bundle
from tests.processes import mlops_serve

from .conftest import as_requests


@pytest.mark.slow
def test_mlops_serve_with_two_workers_answers_and_stops_cleanly(
    model_folder: Bundle, december: pd.DataFrame, tmp_path: Path
) -> None:
    args = ("--model-dir", str(model_folder.folder), "--workers", "2")
    with mlops_serve(*args, options=("--home", str(tmp_path)), ready_within_s=120) as served:
        body = {"flights": as_requests(december.head(2))}
        answers = [httpx.post(f"{served.base}/predict", json=body) for _ in range(6)]
        assert {a.status_code for a in answers} == {200}
        assert answers[0].json()["model"]["version"] == model_folder.version
        docs = httpx.get(f"{served.base}/openapi.json").json()
        assert "/predict" in docs["paths"] and "/v2/models/{name}/infer" in docs["paths"]
    assert served.returncode == 0, served.output
