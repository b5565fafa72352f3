"""POST /v1/events against the real `mlops serve`: a flight after the model's data gets its
features from the events it was sent (the same as the library's online store gives, which
`tests/pipelines/test_online.py` proves equal to the offline table), a flight inside the data
is answered as before, bad events are refused alone and quarantined, a re-sent id is applied
once, and a restart replays what was acknowledged."""

from __future__ import annotations

import json
import shutil
import time
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from pipelines.event_validation import as_records
from pipelines.events import to_minutes
from pipelines.features import build_features_pandas
from pipelines.layout import DataLayout
from pipelines.online import events_from_bronze
from pipelines.splits import SplitPlan
from pipelines.storage import read_parquet_folder
from pipelines.transform import RAW_INPUTS
from serving.bundle import Bundle, download_version
from serving.config import EventsConfig
from serving.live import LiveFeatures
from serving.runtime import LoadedModel, Scored
from serving.schemas import EXAMPLE_FLIGHT
from tests.processes import clean_env, mlops_serve
from training.config import TrackingConfig
from training.registry import GateConfig

from .conftest import Champion, as_requests, eventually, train_and_promote

TOKEN = "events-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DAY = datetime(2014, 1, 2)  # after the bundled data: only events can tell the server about it
LIVE_FLIGHT = {**EXAMPLE_FLIGHT, "scheduled_departure": (DAY + timedelta(hours=18)).isoformat()}


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def day_of_events() -> list[dict]:
    """Twelve EWR departures in the hours before the live flight (each scheduled a day ahead,
    then departed late), the live flight's own schedule, and the weather at its hour."""
    events: list[dict] = []
    for i in range(12):
        scheduled = DAY + timedelta(hours=12, minutes=30 * i)
        key = {
            "carrier": "B6",
            "flight": 100 + i,
            "origin": "EWR",
            "scheduled_departure": _iso(scheduled),
        }
        events.append(
            {
                "id": f"sched-{i}",
                "kind": "scheduled",
                "observed": _iso(scheduled - timedelta(days=1)),
                "dest": "BOS",
                "tailnum": f"N{500 + i}JB",
                "scheduled_arrival": _iso(scheduled + timedelta(hours=1)),
                "distance": 200.0,
                **key,
            }
        )
        events.append(
            {
                "id": f"dep-{i}",
                "kind": "departed",
                "at": _iso(scheduled + timedelta(minutes=20 + 5 * i)),
                **key,
            }
        )
    events.append(
        {
            "id": "sched-live",
            "kind": "scheduled",
            "observed": _iso(DAY),
            "carrier": LIVE_FLIGHT["carrier"],
            "flight": LIVE_FLIGHT["flight"],
            "origin": LIVE_FLIGHT["origin"],
            "dest": LIVE_FLIGHT["dest"],
            "tailnum": LIVE_FLIGHT["tailnum"],
            "scheduled_departure": LIVE_FLIGHT["scheduled_departure"],
            "scheduled_arrival": _iso(DAY + timedelta(hours=21, minutes=30)),
            "distance": LIVE_FLIGHT["distance"],
        }
    )
    weather = {"temp": 28.0, "dewp": 15.1, "humid": 57.0, "wind_dir": 300.0, "wind_speed": 17.3}
    weather |= {"precip": 0.0, "pressure": 1021.5, "visib": 10.0}
    events.append(
        {
            "id": "wx-ewr-18",
            "kind": "weather",
            "origin": "EWR",
            "time_hour": _iso(DAY + timedelta(hours=18)),
            **weather,
        }
    )
    return events


def scored_in_process(
    model_folder: Bundle, events: list[dict], since: datetime | None = None
) -> Scored:
    """The live flight scored by the model through an in-memory store given `events`."""
    model = LoadedModel.load(model_folder)
    live = LiveFeatures(EventsConfig(since=since))
    live.attach(model)
    live.ingest(events)
    departure = datetime.fromisoformat(LIVE_FLIGHT["scheduled_departure"])
    return model.score_rows([{**LIVE_FLIGHT, "scheduled_departure": departure}])


def _predict(base: str, *flights: dict) -> list[dict]:
    response = httpx.post(f"{base}/predict", json={"flights": list(flights)}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def _post(base: str, events: list, headers: dict | None = AUTH) -> httpx.Response:
    return httpx.post(f"{base}/v1/events", json={"events": events}, headers=headers, timeout=30)


def _defaults(prediction: dict) -> set[str]:
    return set(prediction["defaults_used"])


def _late_departures(after: datetime) -> list[dict]:
    """EWR departures in the live flight's windows, all told to the server after `after`
    (their schedules too), each two hours late."""
    events = []
    for i in range(6):
        scheduled = after + timedelta(minutes=30 + 25 * i)
        key = {"carrier": "EV", "flight": 900 + i, "origin": "EWR"}
        key["scheduled_departure"] = _iso(scheduled)
        events += [
            {
                "id": f"late-sched-{i}",
                "kind": "scheduled",
                "observed": _iso(after + timedelta(minutes=10)),
                "dest": "BOS",
                "scheduled_arrival": _iso(scheduled + timedelta(hours=1)),
                **key,
            },
            {
                "id": f"late-dep-{i}",
                "kind": "departed",
                "at": _iso(scheduled + timedelta(hours=2)),
                **key,
            },
        ]
    return events


def test_an_event_observed_after_the_as_of_time_never_changes_the_prediction(
    model_folder: Bundle, tmp_path: Path
) -> None:
    """The online perturbation test: what is told to the server after a request's `as_of`
    leaves that request's answer as it was, and moves the one without `as_of`."""
    env = clean_env(MLOPS_HOME=str(tmp_path / "home"), MLOPS_EVENTS__TOKEN=TOKEN)
    as_of = DAY + timedelta(hours=14, minutes=30)
    then = {**LIVE_FLIGHT, "as_of": _iso(as_of)}
    with mlops_serve("--model-dir", str(model_folder.folder), env=env) as served:
        assert _post(served.base, day_of_events()).json()["accepted"] == len(day_of_events())
        before, now = _predict(served.base, then, LIVE_FLIGHT)
        assert _post(served.base, _late_departures(as_of)).json()["accepted"] == 12
        after, moved = _predict(served.base, then, LIVE_FLIGHT)
    assert after == before, "an event observed after as_of changed the answer"
    assert moved["delay_probability"] != now["delay_probability"], "the perturbation is no-op"
    assert before["as_of"] == "2014-01-02T14:30" and now["as_of"] == "2014-01-02T18:00"
    # the hour's weather (18:00) and the departures after 14:30 were not known at 14:30
    assert "temp" in _defaults(before) and "temp" not in _defaults(now)
    assert before["delay_probability"] != now["delay_probability"]


def test_events_move_a_live_flights_features_and_survive_a_restart(
    model_folder: Bundle, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    env = clean_env(MLOPS_HOME=str(home), MLOPS_EVENTS__TOKEN=TOKEN)
    events = day_of_events()
    bad = [
        {**events[0], "id": "bad-origin", "origin": "ZZZ"},  # no such airport
        {"id": "bad-kind", "kind": "landed"},
    ]
    with mlops_serve("--model-dir", str(model_folder.folder), env=env) as served:
        history, live_before = _predict(served.base, EXAMPLE_FLIGHT, LIVE_FLIGHT)
        assert _post(served.base, events[:2], headers=None).status_code == 401
        # an event that is not an object of scalars is a malformed body: 422, nothing applied
        malformed = _post(served.base, [events[0], "not an object"])
        assert malformed.status_code == 422
        assert malformed.json()["detail"][0]["loc"] == ["body", "events", 1]
        sent = [*events[:5], bad[0], *events[5:], bad[1]]
        answer = _post(served.base, sent)
        assert answer.status_code == 200, answer.text
        report = answer.json()
        assert report["accepted"] == len(events) and report["duplicates"] == 0
        refused = {r["index"]: (r["field"], r["reason"]) for r in report["refused"]}
        assert sorted(refused) == [5, len(sent) - 1], refused
        assert refused[5][0] == "origin"
        assert refused[len(sent) - 1][0] == "kind"
        again = _post(served.base, events).json()
        assert (again["accepted"], again["duplicates"], again["refused"]) == (0, len(events), [])
        history_after, live_after = _predict(served.base, EXAMPLE_FLIGHT, LIVE_FLIGHT)
        metrics = httpx.get(f"{served.base}/metrics").text

    assert history_after == history  # inside the model's data: answered as before
    assert (history["as_of"], history["stale"]) == ("2013-12-01T05:15", [])
    # known up to its departure; no arrival was sent since the model's data ended
    assert (live_after["as_of"], live_after["stale"]) == ("2014-01-02T18:00", ["arrivals"])
    # after it: the weather and the origin's recent departures now come from the events
    before, after = _defaults(live_before), _defaults(live_after)
    assert after < before, (before, after)
    assert not {"temp", "origin_dep_delay_mean_0_1h"} & after
    assert {"temp", "origin_dep_delay_mean_0_1h"} <= before
    # the same as the library's online store gives for the same events
    scored = scored_in_process(model_folder, events)
    assert np.isclose(live_after["delay_probability"], scored.probabilities[0], atol=1e-6)
    assert set(scored.defaults_used[0]) == after
    assert 'mlops_events_total{outcome="accepted"} 26.0' in metrics
    assert 'mlops_events_total{outcome="duplicate"} 26.0' in metrics
    assert 'mlops_events_total{outcome="refused"} 2.0' in metrics

    quarantined = [json.loads(line) for line in (home / "events" / "quarantine.jsonl").open()]
    assert [q["field"] for q in quarantined] == ["origin", "kind"]
    assert quarantined[0]["event"]["id"] == "bad-origin"

    # a restart replays the log: the same answer without sending anything again (asked in
    # the same request: onnxruntime's last bits may differ between a batch of 1 and one of 2)
    with mlops_serve("--model-dir", str(model_folder.folder), env=env) as served:
        _, replayed = _predict(served.base, EXAMPLE_FLIGHT, LIVE_FLIGHT)
        assert _post(served.base, events[:3]).json()["duplicates"] == 3
    assert replayed == live_after


def test_events_are_off_without_a_token(model_folder: Bundle, tmp_path: Path) -> None:
    env = clean_env(MLOPS_HOME=str(tmp_path))
    with mlops_serve("--model-dir", str(model_folder.folder), env=env) as served:
        response = _post(served.base, day_of_events()[:1])
    assert response.status_code == 403, response.text
    assert not (tmp_path / "events").exists()


PARITY_START, PARITY_END = pd.Timestamp("2013-11-01"), pd.Timestamp("2013-11-03")


def two_days_of_events(home: Path) -> tuple[list[dict], pd.DataFrame]:
    """Two days of bronze after `PARITY_START` as events (`events_from_bronze`: each observed
    when it happened, schedules a day ahead), and the second day's labelled flights of the
    feature table (what the offline path scores)."""
    start, end = PARITY_START, PARITY_END
    layout = DataLayout(home)
    flights = read_parquet_folder(layout.bronze("flights"))
    when = flights["scheduled_departure"]
    flights = flights[(when >= start - pd.Timedelta(days=2)) & (when < end)].reset_index(drop=True)
    weather = read_parquet_folder(layout.bronze("weather"))
    weather = weather[(weather["time_hour"] > start) & (weather["time_hour"] < end)]
    airports = read_parquet_folder(layout.bronze("airports"))
    events = events_from_bronze(flights, weather.reset_index(drop=True), airports)
    since = float(to_minutes(pd.Series([start]))[0])
    table = read_parquet_folder(layout.split("test"))
    day = table[(table["scheduled_departure"] >= end - pd.Timedelta(days=1))]
    return as_records(events[events["observed"] > since]), day[day["scheduled_departure"] < end]


def post_in_batches(base: str, records: list[dict], size: int = 2000) -> list[dict]:
    """Each batch's report; nothing refused but a flight the snapshot already held as
    scheduled (a day ahead of `PARITY_START`), and the rest accepted."""
    reports = [_taken(base, records[i : i + size]) for i in range(0, len(records), size)]
    refused = [r for report in reports for r in report["refused"]]
    assert {(r["field"], r["reason"].split(" (")[0]) for r in refused} <= {
        ("scheduled", "this flight is already scheduled")
    }
    assert sum(report["accepted"] for report in reports) == len(records) - len(refused)
    return reports


def _taken(base: str, events: list[dict]) -> dict:
    """The report of a POST, as a client honouring the server's backpressure gets it: a 503
    (nothing applied; it says when to come back) is sent again after its Retry-After."""
    for _ in range(10):
        answer = _post(base, events)
        if answer.status_code != 503:
            break
        time.sleep(min(float(answer.headers.get("Retry-After", "1")), 5.0))
    assert answer.status_code == 200, answer.text
    return answer.json()


def predicted(base: str, flights: list[dict]) -> list[dict]:
    got = []
    for i in range(0, len(flights), 1000):
        got += _predict(base, *flights[i : i + 1000])
    return got


def assert_offline(got: list[dict], day: pd.DataFrame, model_folder: Bundle) -> None:
    """The probabilities the model's offline lookups give (the feature table's,
    `tests/serving/test_skew.py`) within 1e-6, and the same features fell back to defaults."""
    expected = LoadedModel.load(model_folder).score_frame(day[RAW_INPUTS])
    probabilities = np.array([p["delay_probability"] for p in got])
    assert len(got) == len(day) > 500
    np.testing.assert_allclose(probabilities, expected.probabilities, atol=1e-6, rtol=0)
    assert [tuple(p["defaults_used"]) for p in got] == [tuple(d) for d in expected.defaults_used]


@pytest.mark.slow
def test_two_days_replayed_through_the_server_give_the_offline_predictions(
    champion: Champion, model_folder: Bundle, tmp_path: Path
) -> None:
    """The store takes over at 2013-11-01 (`MLOPS_EVENTS__SINCE`): two days of bronze
    become events, posted in batches of 2,000, and every labelled flight of the second day,
    predicted through the store, gets what the offline path gives it."""
    records, day = two_days_of_events(champion.home)
    flights_sent = as_requests(day)
    env = clean_env(
        MLOPS_HOME=str(tmp_path),
        MLOPS_EVENTS__TOKEN=TOKEN,
        MLOPS_EVENTS__SINCE=PARITY_START.isoformat(),
    )
    with mlops_serve("--model-dir", str(model_folder.folder), env=env) as served:
        # before the events, the store knows only what the build knew by 2013-11-01
        before = _predict(served.base, *flights_sent[:200])
        post_in_batches(served.base, records)
        got = predicted(served.base, flights_sent)
    assert_offline(got, day, model_folder)
    # and the answers did come from the store: without the events they fell back
    expected = LoadedModel.load(model_folder).score_frame(day[RAW_INPUTS].head(200))
    blind = sum(
        len(b["defaults_used"]) > len(d)
        for b, d in zip(before, expected.defaults_used, strict=True)
    )
    assert blind > 150, blind


@pytest.fixture(scope="module")
def earlier_build(ingested_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """A real model of a build that ends a month before the champion's (no December): what
    was served before the retrain that took December in. Its training and validation months
    are the champion's, so the network is the same; its lookups end on 2013-12-01."""
    home = tmp_path_factory.mktemp("without-december")
    shutil.copytree(
        ingested_home / "data" / "bronze",
        home / "data" / "bronze",
        ignore=lambda _, names: [n for n in names if n == "month=2013-12"],
    )
    build_features_pandas(DataLayout(home), SplitPlan())
    _, version = train_and_promote(home, GateConfig())
    client = TrackingConfig(home).client()
    return download_version(client, "flight-delay", version, tmp_path_factory.mktemp("models"))


@pytest.mark.slow
def test_a_hot_swap_takes_the_new_builds_snapshot_and_keeps_the_events(
    earlier_build: Bundle, model_folder: Bundle, tmp_path: Path
) -> None:
    """A server on a build that ends in November takes January's events, then its folder
    becomes the champion's build (December in): it answers as a restart on that build with
    the same events does. A flight on the morning of January 1st knows its aircraft's last
    leg, the night before (the new snapshot), the live flight the events (not a reset to the
    snapshot); a re-sent event stays a duplicate."""
    home, served = tmp_path / "home", tmp_path / "model"
    shutil.copytree(earlier_build.folder, served)
    env = clean_env(
        MLOPS_HOME=str(home), MLOPS_EVENTS__TOKEN=TOKEN, MLOPS_SERVE__POLL_INTERVAL_S="1"
    )
    events = day_of_events()
    first, second = events[:12], events[12:]
    # N374JB left JFK for PWM 101 min late at 00:26 on January 1st, the new build's last day
    early = {"carrier": "B6", "flight": 107, "tailnum": "N374JB", "origin": "JFK"}
    early |= {"dest": "PWM", "scheduled_departure": "2014-01-01T08:00:00", "distance": 273.0}
    with mlops_serve("--model-dir", str(served), env=env) as server:
        assert _post(server.base, first).json()["accepted"] == len(first)
        before = _predict(server.base, early, LIVE_FLIGHT)
        loaded = httpx.get(f"{server.base}/model").json()["loaded_at"]
        shutil.copytree(model_folder.folder, tmp_path / "next")
        served.rename(tmp_path / "previous")
        (tmp_path / "next").rename(served)
        eventually(
            lambda: httpx.get(f"{server.base}/model").json().get("loaded_at") != loaded,
            within_s=60,
            what="the server serving the new build",
        )
        assert _post(server.base, second).json()["accepted"] == len(second)
        assert _post(server.base, first).json()["duplicates"] == len(first)
        swapped = _predict(server.base, early, LIVE_FLIGHT)
    with mlops_serve("--model-dir", str(served), env=env) as server:  # the log replayed
        restarted = _predict(server.base, early, LIVE_FLIGHT)

    assert swapped == restarted
    # December's end came with the new build: the aircraft's previous leg is known
    tail = {"tail_prev_hours_since", "tail_prev_dep_delay"}
    assert tail <= _defaults(before[0]) and not tail & _defaults(swapped[0]), swapped[0]
    # and January's events stayed: the live flight's weather and departures are theirs
    assert not {"temp", "origin_dep_delay_mean_0_1h"} & _defaults(swapped[1])
