"""The events through a real Redis stream, with `mlops serve --workers 2`: every worker holds
the same store (whichever worker a connection reaches answers the same), a kill -9 and a
restart replay the stream (nothing acknowledged lost, nothing applied twice), and with Redis
stopped the server keeps answering, refuses new events with a 503, and catches up when Redis
is back. Each test runs its own `redis-server` on a free port, so stopping it is real."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from serving.bundle import Bundle
from tests.processes import Redis, clean_env, mlops_serve

from .conftest import eventually
from .test_events import (
    AUTH,
    LIVE_FLIGHT,
    TOKEN,
    _post,
    _predict,
    day_of_events,
    scored_in_process,
)


def _by_worker(base: str, rounds: int = 40) -> dict[int, set[float]]:
    """The live flight's probability from each worker (a new connection each time)."""
    seen: dict[int, set[float]] = {}
    for _ in range(rounds):
        pid = httpx.get(f"{base}/model").json()["pid"]
        (prediction,) = _predict(base, LIVE_FLIGHT)
        seen.setdefault(pid, set()).add(round(prediction["delay_probability"], 7))
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
        eventually(lambda: len(_by_worker(served.base)) == 2, 30, "both workers seen")
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


def test_without_a_stream_several_workers_refuse_events(
    model_folder: Bundle, tmp_path: Path
) -> None:
    env = clean_env(MLOPS_HOME=str(tmp_path), MLOPS_EVENTS__TOKEN=TOKEN)
    with mlops_serve("--model-dir", str(model_folder.folder), "--workers", "2", env=env) as served:
        response = httpx.post(
            f"{served.base}/v1/events", json={"events": day_of_events()[:1]}, headers=AUTH
        )
    assert response.status_code == 501 and "MLOPS_EVENTS__STREAM_URL" in response.text
