"""The events through a real Redis stream, with `mlops serve --workers 2`: every worker holds
the same store (whichever worker a connection reaches answers the same), a kill -9 and a
restart replay the stream (nothing acknowledged lost, nothing applied twice), and with Redis
stopped the server keeps answering, refuses new events with a 503, and catches up when Redis
is back. Each test runs its own `redis-server` on a free port, so stopping it is real."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipelines.event_validation import as_records, validate_events
from pipelines.events import to_minutes
from pipelines.layout import DataLayout
from pipelines.online import events_from_bronze
from pipelines.storage import read_parquet_folder
from serving.bundle import Bundle
from serving.stream import as_entry
from tests.processes import Redis, clean_env, mlops_serve

from .conftest import Champion, as_requests, eventually
from .test_events import (
    AUTH,
    LIVE_FLIGHT,
    PARITY_START,
    TOKEN,
    _post,
    _predict,
    assert_offline,
    day_of_events,
    post_in_batches,
    scored_in_process,
    two_days_of_events,
)


def _by_worker(base: str, rounds: int = 40) -> dict[int, set[float]]:
    """The live flight's probability from each worker (a new connection each time); a worker
    still catching up with the stream (503) is counted under pid 0, as NaN."""
    seen: dict[int, set[float]] = {}
    for _ in range(rounds):
        info = httpx.get(f"{base}/model")
        answer = httpx.post(f"{base}/predict", json={"flights": [LIVE_FLIGHT]}, timeout=30)
        if 503 in (info.status_code, answer.status_code):
            seen.setdefault(0, set()).add(float("nan"))
            continue
        (prediction,) = answer.json()["predictions"]
        seen.setdefault(info.json()["pid"], set()).add(round(prediction["delay_probability"], 7))
    return seen


@pytest.mark.slow
def test_two_workers_one_store_across_a_kill_and_a_redis_outage(
    model_folder: Bundle, redis_server: Redis, tmp_path: Path
) -> None:
    events = day_of_events()
    env = clean_env(
        MLOPS_HOME=str(tmp_path / "home"),
        MLOPS_EVENTS__TOKEN=TOKEN,
        MLOPS_EVENTS__STREAM_URL=redis_server.url,
        MLOPS_SERVE__POLL_INTERVAL_S="0",
    )
    serve = ("--model-dir", str(model_folder.folder), "--workers", "2")
    expected = round(float(scored_in_process(model_folder, events).probabilities[0]), 7)
    with mlops_serve(*serve, env=env) as served:
        before = _by_worker(served.base)
        first, rest = events[:10], events[10:]
        assert _post(served.base, first).json()["accepted"] == 10
        report = _post(served.base, [*rest, {**rest[0], "id": "x", "origin": "ZZZ"}]).json()
        assert (report["accepted"], report["duplicates"]) == (len(rest), 0), report
        assert [(r["index"], r["field"]) for r in report["refused"]] == [(len(rest), "origin")]
        # both workers applied the whole stream: each answers the single store's figure
        eventually(lambda: len(set(_by_worker(served.base)) - {0}) == 2, 30, "both workers seen")
        eventually(
            lambda: all(v == {expected} for v in _by_worker(served.base).values()),
            10,
            "every worker follows the stream",
        )
        assert all(v != {expected} for v in before.values())
        served.kill()  # no shutdown: the stream must carry what was acknowledged

    with mlops_serve(*serve, env=env) as served:
        eventually(
            lambda: all(v == {expected} for v in _by_worker(served.base).values()),
            30,
            "the restarted workers replay the stream",
        )
        again = _post(served.base, events).json()
        assert (again["accepted"], again["duplicates"]) == (0, len(events)), again

        redis_server.stop()  # Redis down: answers go on from the store, events are refused
        down = _post(served.base, events[:1])
        assert down.status_code == 503 and "stream" in down.json()["detail"], down.text
        assert down.headers["Retry-After"]
        assert all(v == {expected} for v in _by_worker(served.base, 10).values())
        redis_server.start()  # the same data (append-only file): the readers reconnect
        late = {**events[-1], "id": "wx-ewr-19", "time_hour": "2014-01-02T19:00:00"}
        eventually(lambda: _post(served.base, [late]).status_code == 200, 30, "accepting again")
        metrics = httpx.get(f"{served.base}/metrics").text
    assert 'mlops_events_total{outcome="accepted"}' in metrics
    assert np.isfinite(expected)


@pytest.mark.slow
def test_a_worker_is_ready_once_it_has_applied_the_stream_it_found(
    model_folder: Bundle, champion: Champion, redis_server: Redis, tmp_path: Path
) -> None:
    """Ready means caught up: a worker that starts on a long stream answers 503 (saying so)
    until it has applied every entry there was, and its first answer is the whole stream's."""
    import redis

    layout = DataLayout(champion.home)
    flights = read_parquet_folder(layout.bronze("flights"))
    weather = read_parquet_folder(layout.bronze("weather"))
    november = flights[flights["scheduled_departure"].between("2013-11-01", "2013-11-11")]
    hours = weather[weather["time_hour"].between("2013-11-01", "2013-11-11")]
    airports = read_parquet_folder(layout.bronze("airports"))
    typed = events_from_bronze(november, hours, airports)
    typed = typed[typed["observed"] > to_minutes(pd.Series([pd.Timestamp("2013-11-01")]))[0]]
    client = redis.from_url(redis_server.url)
    for start in range(0, len(typed), 300):  # many entries: each one a rebuild of the lookups
        part = typed.iloc[start : start + 300].to_dict("records")
        client.xadd("mlops:events", as_entry(part, list(range(len(part)))))
    day = day_of_events()
    checked = validate_events(day, frozenset(airports["faa"]))
    part = checked.events.to_dict("records")
    client.xadd("mlops:events", as_entry(part, list(range(len(part)))))
    since = datetime(2013, 11, 1)
    expected = scored_in_process(model_folder, [*as_records(typed), *day], since)
    env = clean_env(
        MLOPS_HOME=str(tmp_path / "home"),
        MLOPS_EVENTS__TOKEN=TOKEN,
        MLOPS_EVENTS__STREAM_URL=redis_server.url,
        MLOPS_EVENTS__SINCE=since.isoformat(),
    )
    with mlops_serve("--model-dir", str(model_folder.folder), env=env, until="live") as served:
        behind, seen = [], []
        while (ready := httpx.get(f"{served.base}/v2/health/ready")).status_code != 200:
            answer = httpx.post(f"{served.base}/predict", json={"flights": [LIVE_FLIGHT]})
            seen.append(answer.text[:200])
            if answer.status_code == 503 and "catching up" in answer.text:
                behind.append(answer.json()["detail"])
            time.sleep(0.01)
        (first,) = _predict(served.base, LIVE_FLIGHT)
    assert ready.json() == {"ready": True}
    assert behind, f"never seen behind the stream: make the stream longer {seen[-5:]}"
    assert first["delay_probability"] == pytest.approx(float(expected.probabilities[0]), abs=1e-6)


def test_without_a_stream_several_workers_refuse_events(
    model_folder: Bundle, tmp_path: Path
) -> None:
    env = clean_env(MLOPS_HOME=str(tmp_path), MLOPS_EVENTS__TOKEN=TOKEN)
    with mlops_serve("--model-dir", str(model_folder.folder), "--workers", "2", env=env) as served:
        response = httpx.post(
            f"{served.base}/v1/events", json={"events": day_of_events()[:1]}, headers=AUTH
        )
    assert response.status_code == 501 and "MLOPS_EVENTS__STREAM_URL" in response.text


@pytest.mark.slow
def test_two_days_through_the_stream_on_two_workers_give_the_offline_predictions(
    champion: Champion, model_folder: Bundle, redis_server: Redis, tmp_path: Path
) -> None:
    """The parity test through Redis Streams with `mlops serve --workers 2`: the two days
    posted in batches (each POST answered once the worker that took it applied it), then,
    once each worker's /model says it applied the stream's last entry, every labelled flight
    of the second day asked in requests of 50 on new connections (so of both workers): the
    offline predictions."""
    import redis

    records, day = two_days_of_events(champion.home)
    env = clean_env(
        MLOPS_HOME=str(tmp_path / "home"),
        MLOPS_EVENTS__TOKEN=TOKEN,
        MLOPS_EVENTS__STREAM_URL=redis_server.url,
        MLOPS_EVENTS__SINCE=PARITY_START.isoformat(),
        MLOPS_SERVE__POLL_INTERVAL_S="0",
    )
    serve = ("--model-dir", str(model_folder.folder), "--workers", "2")
    with mlops_serve(*serve, env=env) as served:
        post_in_batches(served.base, records)
        (newest,) = redis.from_url(redis_server.url).xrevrange("mlops:events", count=1)
        last = newest[0].decode()
        positions: dict[int, str] = {}

        def both_applied() -> bool:
            info = httpx.get(f"{served.base}/model").json()
            positions[info["pid"]] = info["events"]["position"]
            return len(positions) == 2 and set(positions.values()) == {last}

        eventually(both_applied, 60, f"both workers at the stream's last entry {last}")
        got = []
        for start in range(0, len(day), 50):
            got += _predict(served.base, *as_requests(day.iloc[start : start + 50]))
        info = httpx.get(f"{served.base}/model").json()
        # realized quality is the service's: each worker joins both workers' predictions
        # (through the stream) with the arrivals, so any worker's /metrics says the same
        landed = {
            (r["carrier"], r["flight"], r["origin"], pd.Timestamp(r["scheduled_departure"]))
            for r in records
            if r["kind"] == "arrived"
        }
        asked = set(
            zip(
                day["carrier"],
                day["flight"].astype(int),
                day["origin"],
                day["scheduled_departure"],
                strict=True,
            )
        )
        expected = len(asked & landed)
        assert expected > 0.8 * len(day)

        def matured_everywhere() -> bool:
            seen = [realized(served.base) for _ in range(20)]  # new connections: both workers
            return all(s == seen[0] for s in seen) and seen[0].get("matured") == expected

        eventually(matured_everywhere, 60, f"{expected} matured on both workers, the same figures")
    assert info["events"]["caught_up"] and info["events"]["stream"].endswith("mlops:events")
    assert_offline(got, day, model_folder)


def realized(base: str) -> dict[str, float]:
    """A worker's realized figures (one new connection): the matured count and each window's."""
    out = {}
    for family in text_string_to_metric_families(httpx.get(f"{base}/metrics").text):
        for sample in family.samples:
            if sample.name == "mlops_matured_predictions_total":
                out["matured"] = out.get("matured", 0) + sample.value
            elif sample.name.startswith("mlops_realized_") and "window" in sample.labels:
                out[f"{sample.name} {sample.labels['window']}"] = sample.value
    return out
