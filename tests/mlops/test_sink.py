"""`mlops sink`: what the server accepted, in bronze as ingest writes it, each event once.

November's bronze becomes the events that would have told a server about it (as `mlops
replay` sends them), in the server's local log or its Redis stream; the sink, the real CLI in
a clean environment, must give back November's flights and weather: the same rows as far as
anything downstream reads them, every flight it could not write quarantined with a reason,
none twice, across a kill -9 at random moments and re-sent events. The stream is trimmed
only behind the sink and behind what a restarting server still needs: a store fed the
trimmed stream gives the features of one fed the whole of it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.event_validation import as_records
from pipelines.events import flight_events, to_minutes
from pipelines.layout import DataLayout
from pipelines.lookups import WEATHER_COLUMNS
from pipelines.online import EVENT_FIELDS, OnlineStore, events_from_bronze
from pipelines.sink import SinkState
from pipelines.storage import read_parquet_folder
from pipelines.transform import RAW_INPUTS, build_features
from serving.stream import as_entry, from_entry
from tests.crash import Kills, bronze_digests, frame_digest, mlops, run_clean, run_killed
from tests.processes import Redis, clean_env, free_port

KEY = ["carrier", "flight", "origin", "scheduled_departure"]
DIMS = ("airlines", "airports", "planes")


class Bronze:
    """The flights scheduled in [start, end) and the weather of those hours, as events."""

    def __init__(self, ingested: Path, start: str, end: str) -> None:
        layout = DataLayout(ingested)
        flights = read_parquet_folder(layout.bronze("flights"))
        inside = flights["scheduled_departure"].between(start, end, inclusive="left")
        self.flights = flights[inside].reset_index(drop=True)
        weather = read_parquet_folder(layout.bronze("weather"))
        self.weather = weather[weather["time_hour"].between(start, end, inclusive="left")]
        self.airports = read_parquet_folder(layout.bronze("airports"))
        self.events = events_from_bronze(self.flights, self.weather, self.airports)
        self.dims = {table: layout.bronze(table) for table in DIMS}

    def home(self, root: Path, log: list[dict] | None = None) -> Path:
        """An MLOPS_HOME with the dimension tables (the sink checks codes against them) and,
        when given, a server's local log."""
        home = root / "home"
        for table, folder in self.dims.items():
            shutil.copytree(folder, DataLayout(home).bronze(table))
        if log is not None:
            (home / "events").mkdir()
            (home / "events" / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
        return home


@pytest.fixture(scope="module")
def november(ingested_home: Path) -> Bronze:
    return Bronze(ingested_home, "2013-11-01", "2013-12-01")


def sink(home: Path, *args: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "mlops", "sink", *args],
        env=clean_env(MLOPS_HOME=str(home), **env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def assert_in_bronze(home: Path, november: Bronze) -> None:
    """Every flight once: in bronze, equal in what the feature graph reads, or
    quarantined with the reason; the weather hours exactly."""
    layout = DataLayout(home)
    written = read_parquet_folder(layout.bronze("flights"))
    refused = read_parquet_folder(layout.quarantine("flights"))
    assert not written.duplicated(KEY).any()
    assert set(refused["reason"]) == {"sched_arr_time: not_nullable"}, "only an unknown zone"
    zones = november.airports.set_index("faa")["tzone"]
    assert refused["dest"].map(zones).isna().all(), "refused flights fly to an unknown zone"
    assert len(written) + len(refused) == len(november.flights)
    original = november.flights.set_index(KEY).loc[written.set_index(KEY).index].reset_index()
    got = flight_events(written, november.airports).sort_values([*KEY[:3], "scheduled"])
    expected = flight_events(original, november.airports).sort_values([*KEY[:3], "scheduled"])
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.reset_index(drop=True))
    np.testing.assert_array_equal(
        written.sort_values(KEY)["distance"], original.sort_values(KEY)["distance"]
    )
    weather = read_parquet_folder(layout.bronze("weather")).sort_values(["origin", "time_hour"])
    expected_weather = november.weather.sort_values(["origin", "time_hour"])
    columns = ["origin", "time_hour", *WEATHER_COLUMNS]
    pd.testing.assert_frame_equal(
        weather[columns].reset_index(drop=True),
        expected_weather[columns].reset_index(drop=True),
        check_dtype=False,
    )


def test_the_local_log_to_bronze_once(november: Bronze, tmp_path: Path) -> None:
    home = november.home(tmp_path, as_records(november.events))
    out = sink(home)
    assert f"{len(november.events):,} events read" in out
    assert_in_bronze(home, november)
    before = bronze_digests(DataLayout(home))
    assert "0 events read" in sink(home), "a second run finds nothing new"
    # re-sent events (within the horizon: older ones are refused, by the server too), a
    # departure of a flight never scheduled and a line that is no event
    again = as_records(november.events.iloc[-1000:])
    stranger = {
        "id": "stranger",
        "kind": "departed",
        "carrier": "UA",
        "flight": 1,
        "origin": "EWR",
        "scheduled_departure": "2013-11-30T10:00:00",
        "at": "2013-11-30T10:05:00",
    }
    with (home / "events" / "log.jsonl").open("a") as log:
        log.write("".join(json.dumps(r) + "\n" for r in [*again, stranger]) + "{not json\n")
    out = sink(home)
    assert "1,000 already in" in out and "2 quarantined" in out, out
    assert bronze_digests(DataLayout(home)) == before, "nothing written twice"
    refused = read_parquet_folder(DataLayout(home).quarantine("events"))
    assert sorted(refused["reason"].str.split(":").str[0]) == [
        "no such flight scheduled",
        "not JSON",
    ]


def _kill_between_parts_and_commit(home: Path, month: str, cwd: Path) -> bool:
    """`mlops sink` killed -9 once a batch has written a part in `month` and before it
    commits (the process group stopped, the state read, then killed): True when caught."""
    layout = DataLayout(home)
    folders = [layout.month_partition(table, month) for table in ("flights", "weather")]
    state = layout.root / "sink" / "state.json"
    process = mlops(home, "sink", "--batch=4000", cwd=cwd)
    try:
        while process.poll() is None:
            parts = [int(p.stem.split("-")[1]) for f in folders for p in f.glob("events-*")]
            if parts:
                os.killpg(process.pid, signal.SIGSTOP)
                committed = SinkState.from_json(state.read_bytes()).batch
                os.killpg(process.pid, signal.SIGKILL)
                return max(parts) > committed
            time.sleep(0.001)
        return False
    finally:
        process.wait()


@pytest.mark.slow
def test_a_sink_killed_at_random_loses_and_duplicates_nothing(
    ingested_home: Path, tmp_path: Path
) -> None:
    # across a month's end: a batch cut by the kill may have written parts in a month that
    # the batch redoing it (of another size: the stream may have grown) does not reach
    window = Bronze(ingested_home, "2013-11-16", "2013-12-16")
    log = as_records(window.events)
    clean_home = window.home(tmp_path / "clean", log)
    layout = DataLayout(clean_home)
    run = run_clean(clean_home, "sink", cwd=tmp_path, watch=(layout.root / "bronze",))
    expected = bronze_digests(layout)
    refused = frame_digest(read_parquet_folder(layout.quarantine("flights")))
    kills = Kills(seed=14).measured(run)
    rng = random.Random(kills.seed)
    for attempt in range(4):
        home = window.home(tmp_path / f"killed-{attempt}", log)
        if _kill_between_parts_and_commit(home, "2013-12", tmp_path):
            break
    else:
        pytest.fail("never caught a batch between its first December part and its commit")
    for _ in range(6):  # each run gets on a few batches from where the last one committed
        batch = f"--batch={rng.randrange(1000, 3000)}"
        at = run.writes_from_s + rng.uniform(0.0, 1.0)
        run_killed(home, "sink", batch, at_s=at, cwd=tmp_path, kills=kills)
    sink(home)
    assert sum(killed for _, killed in kills.done) >= 3, kills.summary()
    got = DataLayout(home)
    assert bronze_digests(got) == expected, kills.summary()
    assert frame_digest(read_parquet_folder(got.quarantine("flights"))) == refused
    assert_in_bronze(home, window)


@pytest.mark.slow
def test_the_stream_to_bronze_and_trimmed_behind_what_a_server_needs(
    november: Bronze, redis_server: Redis, tmp_path: Path
) -> None:
    import redis

    client = redis.from_url(redis_server.url)
    events = november.events
    now = float(to_minutes(pd.Series([pd.Timestamp("2013-11-20T12:00")]))[0])
    first = int(np.searchsorted(events["observed"].to_numpy(), now, side="right"))

    def publish(part: pd.DataFrame) -> None:
        for start in range(0, len(part), 1000):  # as POST /v1/events adds them
            typed = part.iloc[start : start + 1000].to_dict("records")
            client.xadd("mlops:events", as_entry(typed, list(range(len(typed)))))

    publish(events.iloc[:first])
    entries = client.xlen("mlops:events")
    home = november.home(tmp_path)
    stream = {"MLOPS_EVENTS__STREAM_URL": redis_server.url}
    assert f"{first:,} events read" in sink(home, **stream)
    kept = client.xrange("mlops:events")
    state = SinkState.from_json((DataLayout(home).root / "sink" / "state.json").read_bytes())
    assert 0 < len(kept) < entries / 2, "trimmed, to what the last few days need"
    assert [e for e, _ in state.entries] == [i.decode() for i, _ in kept]
    # what was trimmed can no longer matter: a server starting again on the trimmed stream
    # computes, for the flights from its newest event on, what one fed all of it does
    planes = read_parquet_folder(DataLayout(home).bronze("planes"))
    stores = OnlineStore(planes, november.airports), OnlineStore(planes, november.airports)
    stores[0].apply(events.iloc[:first])
    rest = pd.DataFrame([e for _, fields in kept for e in from_entry(fields)[0]])
    stores[1].apply(rest.reindex(columns=EVENT_FIELDS))
    assert stores[1].clock == stores[0].clock == now
    when = to_minutes(november.flights["scheduled_departure"])
    ahead = november.flights[(when >= now) & (when <= now + 12 * 60)]
    assert len(ahead) > 300
    full, trimmed = (build_features(ahead[RAW_INPUTS], store.lookups()) for store in stores)
    pd.testing.assert_frame_equal(full, trimmed)
    # the rest of the month: the flights waiting for their outcome are written then
    publish(events.iloc[first:])
    assert f"{len(events) - first:,} events read" in sink(home, **stream)
    assert_in_bronze(home, november)
    assert "0 events read" in sink(home, **stream)


def test_a_following_sink_tells_prometheus_what_it_wrote_and_whether_it_keeps_up(
    november: Bronze, redis_server: Redis, tmp_path: Path
) -> None:
    import httpx
    import redis
    from prometheus_client.parser import text_string_to_metric_families

    from mlops.flows.sink import StreamSource

    client = redis.from_url(redis_server.url)
    # the lag is read from the entry ids, the milliseconds Redis took them at
    client.xadd("lagging", {"n": "1"}, id="1000-0")
    client.xadd("lagging", {"n": "2"}, id="61000-0")
    lagging = StreamSource(redis_server.url, "lagging", 100)
    assert (lagging.lag_s("1000-0"), lagging.lag_s("61000-0")) == (60.0, 0.0)
    assert StreamSource(redis_server.url, "absent", 100).lag_s("") is None

    events = november.events.iloc[:3000]
    for start in range(0, len(events), 1000):
        typed = events.iloc[start : start + 1000].to_dict("records")
        client.xadd("mlops:events", as_entry(typed, list(range(len(typed)))))
    port = free_port()
    follower = subprocess.Popen(
        [sys.executable, "-m", "mlops", "sink", "--follow"],
        env=clean_env(
            MLOPS_HOME=str(november.home(tmp_path)),
            MLOPS_EVENTS__STREAM_URL=redis_server.url,
            MLOPS_SINK__PORT=str(port),
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def scraped() -> dict[str, float]:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        except httpx.TransportError:
            return {}
        families = text_string_to_metric_families(text)
        return {s.name: s.value for family in families for s in family.samples}

    def waited(done: Callable[[dict[str, float]], bool]) -> dict[str, float]:
        deadline = time.monotonic() + 120
        while not done(seen := scraped()):
            assert follower.poll() is None, "the sink exited"
            assert time.monotonic() < deadline, seen
            time.sleep(0.2)
        return seen

    try:
        seen = waited(
            lambda m: (
                m.get("mlops_sink_events_total") == len(events)
                and m["mlops_sink_last_commit_timestamp_seconds"] > 0
            )  # set just after the commit
        )
        assert seen["mlops_sink_lag_seconds"] == 0 and seen["mlops_sink_source_up"] == 1
        assert abs(seen["mlops_sink_last_commit_timestamp_seconds"] - time.time()) < 60
        assert seen["mlops_sink_rows_total"] > 0, "flights or weather written"
        assert seen["mlops_sink_waiting_flights"] > 0
        redis_server.stop()  # the source down: said so, and no lag is made up
        seen = waited(lambda m: m.get("mlops_sink_source_up") == 0)
        assert "mlops_sink_lag_seconds" not in seen
    finally:
        follower.terminate()
        follower.wait(timeout=30)
