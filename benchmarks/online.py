"""Benchmark: the online path, POST /v1/events into the store and /predict out of it.

    PYTHONPATH=. python benchmarks/online.py --model-dir MODEL --home HOME \
        [--stream-url redis://127.0.0.1:6379/0]

MODEL: a model folder (`mlops export`); HOME: an MLOPS_HOME whose bronze holds the bundled
data (`mlops data ingest`). One `mlops serve --model-dir MODEL` with the store taking over at
2013-11-01 (`MLOPS_EVENTS__SINCE`), then:

- ingest: a week of November's bronze as events (`events_from_bronze`), posted in batches of
  1,000 by one client, one after another: events/s accepted; beside it, the same events
  applied in this process by `serving.live` (validation, the store, the lookups' rebuild),
  so the ratio is what HTTP and JSON cost;
- freshness: one weather observation posted, then a /predict for a flight at that airport
  and hour; the answer reflects it (`temp` no longer a default) or the run fails. The event is
  visible once its POST returns (the store is updated before the answer): p50 / p99 of the
  POST, and of POST + /predict;
- assembly: the transform for one flight, in process, on the store's lookups against the
  model's own (the offline path's), p50 / p99.

With `--stream-url redis://...` (a fresh stream key each run, deleted after), also:

- through the stream: two servers on one stream (two API containers; `--workers 2` is the
  same, each worker reads the whole stream, but a client cannot pick the worker it asks):
  the week posted to the first (each POST answers once that server applied it), until the
  second has applied all of it; and freshness, posted to the first and asked of the second
  until its prediction reflects it;
- serving under events: /predict at concurrency 32 (wrk where installed, else the aiohttp
  client; `--client`) on a server of a stream, in interleaved rounds, quiet and while 1,000
  events/s are posted to it (November, in order), in batches of 100 every 100 ms and of
  1,000 every second, and the same 100 events re-sent every 100 ms (all duplicates: the POST
  and the stream without the store's work): the ratio of the throughputs, and the rate the
  feed reached (a POST is answered once the server applied it).

Writes benchmarks/results/online.json and prints the rows for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "benchmarks":
    sys.path[0] = str(ROOT)  # `serving` must be the package, not benchmarks/serving.py

# ruff: noqa: E402
import httpx
import numpy as np
import pandas as pd

from pipelines.event_validation import as_records
from pipelines.events import to_minutes
from pipelines.layout import DataLayout
from pipelines.online import events_from_bronze
from pipelines.spec import LABEL
from pipelines.storage import read_parquet_folder
from pipelines.transform import RAW_INPUTS, feature_arrays
from serving.bundle import read_bundle
from serving.config import EventsConfig
from serving.live import LiveFeatures, ModelView
from serving.runtime import LoadedModel, rows_to_columns
from serving.schemas import EXAMPLE_FLIGHT
from tests.load import cpu_seconds, rss_bytes
from tests.processes import clean_env, mlops_serve

TOKEN = "online-benchmark"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
START, DAYS = pd.Timestamp("2013-11-01"), 7
BATCH = 1000


def events_of(home: Path, days: int = DAYS) -> list[dict]:
    """The first `days` of November's bronze as events, in observed-time order."""
    layout = DataLayout(home)
    end = START + pd.Timedelta(days=days)
    flights = read_parquet_folder(layout.bronze("flights"))
    when = flights["scheduled_departure"]
    flights = flights[(when >= START - pd.Timedelta(days=2)) & (when < end)]
    weather = read_parquet_folder(layout.bronze("weather"))
    weather = weather[(weather["time_hour"] > START) & (weather["time_hour"] < end)]
    airports = read_parquet_folder(layout.bronze("airports"))
    events = events_from_bronze(
        flights.reset_index(drop=True), weather.reset_index(drop=True), airports
    )
    since = float(to_minutes(pd.Series([START]))[0])
    return as_records(events[events["observed"] > since])


def ms(values: list[float], q: float) -> float:
    return round(float(np.quantile(values, q)) * 1000, 3)


def ingest_over_http(base: str, records: list[dict]) -> tuple[float, int]:
    accepted = 0
    started = time.perf_counter()
    with httpx.Client(base_url=base, headers=AUTH, timeout=60) as client:
        for i in range(0, len(records), BATCH):
            answer = client.post("/v1/events", json={"events": records[i : i + BATCH]})
            answer.raise_for_status()
            accepted += answer.json()["accepted"]
    return time.perf_counter() - started, accepted


def ingest_in_process(model_dir: Path, records: list[dict]) -> tuple[float, ModelView]:
    """The events applied in process; the model's view of the store they filled."""
    live = LiveFeatures(EventsConfig(since=START.to_pydatetime()))
    model = LoadedModel.load(read_bundle(model_dir))
    live.attach(model)
    started = time.perf_counter()
    for i in range(0, len(records), BATCH):
        live.ingest(records[i : i + BATCH])
    assert model.live is not None
    return time.perf_counter() - started, model.live


def weather_at_ewr(event_id: str, hour: datetime, temp: float) -> dict:
    """One hour's weather observation at EWR: the event the probes below look for."""
    return {
        "id": event_id,
        "kind": "weather",
        "origin": "EWR",
        "time_hour": hour.isoformat(),
        "temp": temp,
        "visib": 10.0,
    }


def knows_weather(client: httpx.Client, hour: datetime) -> bool:
    """Whether the server answers a flight at EWR in `hour` from that hour's weather."""
    flight = {**EXAMPLE_FLIGHT, "scheduled_departure": (hour + timedelta(minutes=5)).isoformat()}
    answer = client.post("/predict", json={"flights": [flight]})
    return "temp" not in answer.json()["predictions"][0]["defaults_used"]


def freshness(base: str, rounds: int, seen_at: str | None = None) -> dict[str, float]:
    """One new hour's weather at EWR posted to `base`, then a flight at EWR in that hour asked
    of `seen_at` (default: the same server, which must answer from the event at once; another
    server on the same stream is asked until it does)."""
    first = datetime(2013, 11, 1) + timedelta(days=DAYS, hours=2)
    post_s, seen_s = [], []
    with (
        httpx.Client(base_url=base, timeout=30) as client,
        httpx.Client(base_url=seen_at or base, timeout=30) as other,
    ):
        for k in range(rounds):
            hour = first + timedelta(hours=k)
            event = weather_at_ewr(f"fresh-{k}", hour, 40.0 + k % 10)
            started = time.perf_counter()
            posted = client.post("/v1/events", json={"events": [event]}, headers=AUTH)
            posted_at = time.perf_counter()
            assert posted.json()["accepted"] == 1, posted.text
            while not knows_weather(other, hour):
                assert seen_at is not None, f"{base} did not answer from the event it took"
                assert time.perf_counter() - started < 10, f"{event['id']} never seen"
            seen_s.append(time.perf_counter() - started)
            post_s.append(posted_at - started)
    return {
        "post_p50_ms": ms(post_s, 0.5),
        "post_p99_ms": ms(post_s, 0.99),
        "post_and_predict_p50_ms": ms(seen_s, 0.5),
        "post_and_predict_p99_ms": ms(seen_s, 0.99),
    }


def visible_at(base: str, hour: datetime, within_s: float = 600) -> None:
    """Post nothing; wait until `base` answers a flight at EWR in `hour` from its weather (the
    sentinel another server published last)."""
    deadline = time.perf_counter() + within_s
    with httpx.Client(base_url=base, timeout=30) as client:
        while not knows_weather(client, hour):
            assert time.perf_counter() < deadline, f"the sentinel at {hour} never reached {base}"
            time.sleep(0.005)


@contextmanager
def stream_servers(model_dir: Path, url: str, count: int) -> Iterator[list[str]]:
    """The base URLs of `count` servers on one fresh Redis stream (each its own MLOPS_HOME):
    several API containers, or `--workers N`, each of which reads the whole stream."""
    key = f"mlops:bench:{uuid.uuid4().hex[:8]}"
    with ExitStack() as stack:
        stack.callback(_delete_stream, url, key)
        bases = []
        for _ in range(count):
            home = stack.enter_context(tempfile.TemporaryDirectory())
            env = clean_env(
                MLOPS_HOME=home,
                MLOPS_EVENTS__TOKEN=TOKEN,
                MLOPS_EVENTS__SINCE=START.isoformat(),
                MLOPS_EVENTS__STREAM_URL=url,
                MLOPS_EVENTS__STREAM_KEY=key,
                PYTHONPATH=str(ROOT),
            )
            bases.append(
                stack.enter_context(mlops_serve("--model-dir", str(model_dir), env=env)).base
            )
        yield bases


def _delete_stream(url: str, key: str) -> None:
    import redis

    redis.from_url(url).delete(key)


def through_the_stream(model_dir: Path, url: str, records: list[dict], rounds: int) -> dict:
    """Two servers on one stream: the week posted to the first (each POST returns once the
    first applied it), until the second has applied all of it; then freshness, posted to
    the first and seen in a prediction of the second."""
    with stream_servers(model_dir, url, 2) as (first, second):
        last = datetime(2013, 11, 1) + timedelta(days=DAYS, hours=1)  # the week's end
        started = time.perf_counter()
        sentinel = weather_at_ewr(f"sentinel-{last:%Y%m%d%H}", last, 50.0)
        posted_s, accepted = ingest_over_http(first, [*records, sentinel])
        visible_at(second, last)
        both_s = time.perf_counter() - started
        fresh = freshness(first, rounds, seen_at=second)
    return {
        "servers": 2,
        "accepted": accepted - 1,
        "posted_events_per_s": round(len(records) / posted_s),
        "applied_by_both_events_per_s": round(len(records) / both_s),
        "freshness_to_the_other_server": fresh,
    }


FEEDS = {  # size, every (s), re-sent: 1,000 events/s each
    "100 every 100 ms": (100, 0.1, False),
    "1,000 every second": (1000, 1.0, False),
    # the same 100 events again and again: every one a duplicate, so the store and its
    # lookups do not change; what is left is the POST, the stream and the checks
    "100 every 100 ms, already in": (100, 0.1, True),
}


def serving_under_events(
    model_dir: Path, url: str, feed: list[dict], seconds: float, rounds: int, load_client: str
) -> dict:
    """/predict at concurrency 32 (one flight a request, `benchmarks/serving.py`'s load
    generator `load_client` in its own process) on a server of a stream, in interleaved
    rounds: quiet, and while `feed` is posted to it at 1,000 events/s in each of `FEEDS`'
    batchings (each new batch is one rebuild of the store's lookups)."""
    bench = _bench_serving()
    flight = {**EXAMPLE_FLIGHT, "scheduled_departure": "2013-11-30T17:15:00"}
    body = json.dumps({"flights": [flight]}).encode()
    figures: dict[str, list[dict]] = {"quiet": [], **{name: [] for name in FEEDS}}
    fed = 0
    with (
        stream_servers(model_dir, url, 1) as (base,),
        httpx.Client(base_url=base, headers=AUTH, timeout=30) as client,
    ):
        for _ in range(rounds):
            for name in figures:
                batching = FEEDS.get(name)  # None: quiet
                fed_by = feeding(client, feed, fed, batching) if batching else nullcontext(Sent())
                with fed_by as sent:
                    figures[name].append(
                        bench.load(f"{base}/predict", body, 32, seconds, load_client)
                    )
                if batching:
                    fed += sent.new
                    figures[name][-1]["events_per_s"] = round(sent.events / seconds)
    median = {
        name: float(np.median([f["requests_per_s"] for f in each]))
        for name, each in figures.items()
    }
    return {
        "concurrency": 32,
        "client": load_client,
        "requests_per_s": {name: round(value) for name, value in median.items()},
        "ratio": {name: round(median[name] / median["quiet"], 2) for name in FEEDS},
        "events_per_s": {
            name: round(float(np.median([f["events_per_s"] for f in figures[name]])))
            for name in FEEDS
        },
        "failures": {name: sum(f["failures"] for f in each) for name, each in figures.items()},
        "p99_ms": {
            name: round(float(np.median([f["p99_ms"] for f in each])), 1)
            for name, each in figures.items()
        },
        "rounds": figures,
    }


@dataclass
class Sent:
    events: int = 0  # posted while feeding
    new: int = 0  # of them, the feed's next (not re-sent): where the next feed starts


@contextmanager
def feeding(
    client: httpx.Client, feed: list[dict], fed: int, batching: tuple[int, float, bool]
) -> Iterator[Sent]:
    """`feed` from its `fed`-th event posted in a thread in one of `FEEDS`' batchings for as
    long as the block runs; `Sent` says how much once it has ended."""
    size, every, again = batching
    records = feed[:size] if again else feed[fed:]
    stop, sent = threading.Event(), []
    feeder = threading.Thread(target=_feed, args=(client, records, size, every, stop, sent, again))
    feeder.start()
    counted = Sent()
    try:
        yield counted
    finally:
        stop.set()
        feeder.join()
    assert sent, "the feed failed: see the thread's error above"
    counted.events, counted.new = sent[0], 0 if again else sent[0]


def _feed(
    client: httpx.Client,
    records: list[dict],
    size: int,
    every: float,
    stop: threading.Event,
    sent: list,
    again: bool = False,
) -> None:
    """Post `records` in order (`again`: the first `size` of them each time), `size` every
    `every` seconds (late posts are not made up for), until `stop`; `sent` gets how many."""
    due, count = time.perf_counter(), 0
    while not stop.is_set():
        batch = records[:size] if again else records[count : count + size]
        if not batch:
            raise RuntimeError("the feed ran out of events before the round ended")
        client.post("/v1/events", json={"events": batch}).raise_for_status()
        count += len(batch)
        due = max(due + every, time.perf_counter())
        stop.wait(max(0.0, due - time.perf_counter()))
    sent.append(count)


def cost_per_post(model_dir: Path, url: str, feed: list[dict], seconds: float) -> dict:
    """The server's CPU per POST of each of `FEEDS`, with no /predict load: its threads' user
    and system time from /proc before and after `seconds` of the feed, over the POSTs made;
    the event loop's thread (the process's first) apart from the rest (the threads that
    check and apply events, and rebuild the lookups)."""
    costs: dict[str, dict[str, float]] = {}
    fed = 0
    with (
        stream_servers(model_dir, url, 1) as (base,),
        httpx.Client(base_url=base, headers=AUTH, timeout=30) as client,
    ):
        pid = client.get("/model").json()["pid"]
        for name, batching in FEEDS.items():
            before = cpu_seconds(pid), cpu_seconds(pid, thread=pid)
            with feeding(client, feed, fed, batching) as sent:
                time.sleep(seconds)
            after = cpu_seconds(pid), cpu_seconds(pid, thread=pid)
            fed += sent.new
            posts = sent.events // batching[0]
            costs[name] = {
                "posts": posts,
                "cpu_ms_per_post": round((after[0] - before[0]) * 1000 / posts, 2),
                "event_loop_ms_per_post": round((after[1] - before[1]) * 1000 / posts, 2),
            }
    return costs


def _bench_serving():
    """benchmarks/serving.py (its name is the package's): its load generator."""
    spec = importlib.util.spec_from_file_location(
        "bench_serving", ROOT / "benchmarks" / "serving.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    Path("/tmp/mlops-bench").mkdir(exist_ok=True)
    return module


def replay_months(model_dir: Path, home: Path, since: str, until: str) -> dict:
    """`mlops replay`'s flow (as fast as the server answers) against one server whose store
    takes over at `since`, the server's resident memory sampled every second; and the
    model's offline ROC-AUC on the same months (its feature table's test split) beside the
    replay's realized one."""
    from mlops.flows.progress import NoProgress
    from mlops.flows.replay import replay
    from mlops.settings import Settings
    from pipelines.metrics import roc_auc

    samples: list[tuple[float, int]] = []
    with tempfile.TemporaryDirectory() as served_home:
        env = clean_env(
            MLOPS_HOME=served_home,
            MLOPS_EVENTS__TOKEN=TOKEN,
            MLOPS_EVENTS__SINCE=f"{since}-01",
            PYTHONPATH=str(ROOT),
        )
        with mlops_serve("--model-dir", str(model_dir), env=env) as served:
            stop = threading.Event()
            started = time.perf_counter()

            def sample() -> None:
                while not stop.wait(1.0):
                    samples.append((time.perf_counter() - started, rss_bytes(served.pid)))

            sampler = threading.Thread(target=sample)
            sampler.start()
            try:
                settings = Settings(home=home, events=EventsConfig(token=TOKEN))
                report = replay(settings, NoProgress(), served.base, since, until)
            finally:
                stop.set()
                sampler.join()
    model = LoadedModel.load(read_bundle(model_dir))
    table = read_parquet_folder(DataLayout(home).split("test"))
    offline = roc_auc(table[LABEL].to_numpy(), model.score_frame(table[RAW_INPUTS]).probabilities)
    mib = np.array([rss for _, rss in samples]) / 2**20
    # the horizon (72 h of event time) is full after a few percent of the run: past the
    # first fifth, memory should stay flat
    settled = mib[len(mib) // 5 :]
    return {
        "months": f"{since}..{until}",
        "events": report.events,
        "accepted": report.accepted,
        "refused": report.refused,
        "predicted": report.predicted,
        "seconds": round(report.seconds, 1),
        "events_per_s": round(report.events / report.seconds),
        "realized_auc": round(report.auc, 4),
        "offline_auc_test_split": round(float(offline), 4),
        "rss_mib_at_20pct": round(float(settled[0]), 1),
        "rss_mib_settled_min_max": [round(float(settled.min()), 1), round(float(settled.max()), 1)],
        "rss_settled_spread": round(float(settled.max() / settled.min() - 1), 3),
        "rss_mib_series_every_10s": [round(float(v), 1) for v in mib[::10]],
    }


def assembly(live: ModelView, model_dir: Path, rounds: int) -> dict[str, float]:
    history = LoadedModel.load(read_bundle(model_dir)).lookups
    inside = {**EXAMPLE_FLIGHT, "scheduled_departure": datetime(2013, 10, 15, 17, 15)}
    after = {
        **inside,
        "scheduled_departure": datetime(2013, 11, 1) + timedelta(days=DAYS - 1, hours=17),
    }
    timings: dict[str, list[float]] = {"store": [], "model": []}
    for _ in range(rounds):
        for name, row in (("store", after), ("model", inside)):
            columns = rows_to_columns([row])
            started = time.perf_counter()
            if name == "store":
                live.features(columns, 1, history)
            else:
                feature_arrays(columns, history, 1)
            timings[name].append(time.perf_counter() - started)
    out = {f"{name}_p50_ms": ms(values, 0.5) for name, values in timings.items()}
    out |= {f"{name}_p99_ms": ms(values, 0.99) for name, values in timings.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--home", type=Path, required=True, help="an MLOPS_HOME with bronze")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument(
        "--stream-url", default="", help="redis://...: the stream's figures too (a fresh key)"
    )
    parser.add_argument("--load-seconds", type=float, default=15.0)
    parser.add_argument("--load-rounds", type=int, default=3)
    parser.add_argument(
        "--client",
        choices=["wrk", "aiohttp"],
        default="wrk" if shutil.which("wrk") else "aiohttp",
        help="the /predict load generator under events (wrk: less of the 2 cores)",
    )
    parser.add_argument(
        "--replay", action="store_true", help="only November-December through `mlops replay`"
    )
    parser.add_argument(
        "--under-events",
        action="store_true",
        help="only the stream's figures under events: the server's CPU per POST of each "
        "feed, then /predict at c=32 under each (needs --stream-url)",
    )
    args = parser.parse_args()
    if args.replay:
        result = {"replay": replay_months(args.model_dir, args.home, "2013-11", "2013-12")}
        _write("online-replay.json", result)
        return
    if args.under_events:
        feed = events_of(args.home, days=60)
        result = {
            "cost_per_post": cost_per_post(args.model_dir, args.stream_url, feed, 10.0),
            "serving_under_events": serving_under_events(
                args.model_dir,
                args.stream_url,
                feed,
                args.load_seconds,
                args.load_rounds,
                args.client,
            ),
        }
        _write("online-under-events.json", result)
        return
    records = events_of(args.home)
    in_process_s, live = ingest_in_process(args.model_dir, records)
    with tempfile.TemporaryDirectory() as home:
        env = clean_env(
            MLOPS_HOME=home,
            MLOPS_EVENTS__TOKEN=TOKEN,
            MLOPS_EVENTS__SINCE=START.isoformat(),
            PYTHONPATH=str(ROOT),
        )
        with mlops_serve("--model-dir", str(args.model_dir), env=env) as served:
            http_s, accepted = ingest_over_http(served.base, records)
            fresh = freshness(served.base, args.rounds)
    result = {
        "events": len(records),
        "accepted": accepted,
        "http_events_per_s": round(len(records) / http_s),
        "in_process_events_per_s": round(len(records) / in_process_s),
        "http_over_in_process": round(in_process_s / http_s, 2),
        "freshness": fresh,
        "assembly": assembly(live, args.model_dir, args.rounds * 5),
    }
    if args.stream_url:
        result["stream"] = through_the_stream(args.model_dir, args.stream_url, records, args.rounds)
        feed = events_of(args.home, days=60)
        result["serving_under_events"] = serving_under_events(
            args.model_dir, args.stream_url, feed, args.load_seconds, args.load_rounds, args.client
        )
    _write("online.json", result)


def _write(name: str, result: dict) -> None:
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
