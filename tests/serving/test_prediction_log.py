"""The prediction log against the real `mlops serve`: every prediction answered is in the
offline store's Parquet with the request's id, and a kill -9 loses at most what was answered
in the last flush interval."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from pipelines.layout import DataLayout
from serving.bundle import Bundle
from serving.prediction_log import COLUMNS
from serving.schemas import EXAMPLE_FLIGHT
from tests.processes import clean_env, mlops_serve

from .conftest import as_requests


def logged(home: Path) -> pd.DataFrame:
    """Every file of the log, in the order written (each must be whole: a torn one would fail
    to read)."""
    files = sorted(DataLayout(home).predictions.glob("date=*/*.parquet"))
    assert files, "nothing was logged"
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def test_every_prediction_is_logged_with_its_request_id(
    model_folder: Bundle, december: pd.DataFrame, tmp_path: Path
) -> None:
    flights = as_requests(december.head(30))
    env = clean_env(MLOPS_HOME=str(tmp_path), MLOPS_PREDICTIONS__FLUSH_S="0.2")
    answers, models = [], set()
    with (
        mlops_serve("--model-dir", str(model_folder.folder), env=env) as served,
        httpx.Client(base_url=served.base) as client,
    ):
        for i in range(0, len(flights), 3):  # requests of 3, every other one with its own id
            headers = {"X-Request-ID": f"client-{i}"} if i % 2 == 0 else {}
            answer = client.post("/predict", json={"flights": flights[i : i + 3]}, headers=headers)
            assert answer.status_code == 200, answer.text
            request_id = answer.headers["x-request-id"]
            assert request_id == headers.get("X-Request-ID", request_id)
            answers += [(request_id, p) for p in answer.json()["predictions"]]
            models.add(tuple(answer.json()["model"].values()))
        one = {"flights": flights[:1]}
        bad = client.post("/predict", json=one, headers={"X-Request-ID": "a b"})
        assert bad.headers["x-request-id"] != "a b"  # not a token: a new id instead
    # a clean stop writes everything
    log = logged(tmp_path)
    assert list(log.columns) == COLUMNS
    assert len(log) == len(flights) + 1
    log = log.iloc[:-1]
    assert log["request_id"].tolist() == [request_id for request_id, _ in answers]
    assert log["request_id"].str.startswith("client-").sum() == 15
    np.testing.assert_array_equal(
        log["delay_probability"].to_numpy(), [p["delay_probability"] for _, p in answers]
    )
    assert log["delayed"].tolist() == [p["delayed"] for _, p in answers]
    assert log["as_of"].dt.strftime("%Y-%m-%dT%H:%M").tolist() == [p["as_of"] for _, p in answers]
    assert set(zip(log["model"], log["version"], strict=True)) == models
    assert log["stale"].tolist() == [",".join(p["stale"]) for _, p in answers]
    sent = pd.DataFrame(flights)
    assert log["carrier"].tolist() == sent["carrier"].tolist()
    assert log["tailnum"].tolist() == sent["tailnum"].tolist()
    assert (
        log["scheduled_departure"].dt.strftime("%Y-%m-%dT%H:%M:%S").tolist()
        == pd.to_datetime(sent["scheduled_departure"]).dt.strftime("%Y-%m-%dT%H:%M:%S").tolist()
    )


def test_a_kill_loses_at_most_the_last_flush_interval(model_folder: Bundle, tmp_path: Path) -> None:
    flush_s = 0.5
    env = clean_env(MLOPS_HOME=str(tmp_path), MLOPS_PREDICTIONS__FLUSH_S=str(flush_s))
    answered: list[tuple[float, str]] = []
    with (
        mlops_serve("--model-dir", str(model_folder.folder), env=env) as served,
        httpx.Client(base_url=served.base) as client,
    ):
        started = time.monotonic()
        while time.monotonic() - started < 3:
            answer = client.post("/predict", json={"flights": [EXAMPLE_FLIGHT]})
            assert answer.status_code == 200, answer.text
            answered.append((time.monotonic(), answer.headers["x-request-id"]))
        metrics = client.get("/metrics").text
        served.kill()  # SIGKILL to the server and its workers: no shutdown, no last flush
        killed = time.monotonic()
    log = logged(tmp_path)
    assert log["request_id"].is_unique
    kept = set(log["request_id"])
    # what was answered more than a flush interval (and a margin for the write) before the
    # kill is on disk; what is missing was answered within it
    old = [rid for at, rid in answered if killed - at > flush_s + 0.5]
    assert len(old) > 100
    assert set(old) <= kept, f"{len(set(old) - kept)} of {len(old)} older predictions lost"
    lost = [at for at, rid in answered if rid not in kept]
    assert all(killed - at <= flush_s + 0.5 for at in lost)
    assert kept <= {rid for _, rid in answered}
    written = metrics.split('mlops_prediction_log_rows_total{outcome="written"} ')[1]
    assert 0 < float(written.split()[0]) <= len(answered)
