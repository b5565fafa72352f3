"""Benchmark: the online path, POST /v1/events into the store and /predict out of it.

    PYTHONPATH=. python benchmarks/online.py --model-dir MODEL --home HOME

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

Writes benchmarks/results/online.json and prints the rows for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
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
from pipelines.storage import read_parquet_folder
from pipelines.transform import feature_arrays
from serving.bundle import read_bundle
from serving.config import EventsConfig
from serving.live import LiveFeatures
from serving.runtime import LoadedModel, rows_to_columns
from serving.schemas import EXAMPLE_FLIGHT
from tests.processes import clean_env, mlops_serve

TOKEN = "online-benchmark"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
START, DAYS = pd.Timestamp("2013-11-01"), 7
BATCH = 1000


def week_of_events(home: Path) -> list[dict]:
    layout = DataLayout(home)
    end = START + pd.Timedelta(days=DAYS)
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


def ingest_in_process(model_dir: Path, records: list[dict]) -> tuple[float, LiveFeatures]:
    live = LiveFeatures(EventsConfig(since=START.to_pydatetime()))
    live.attach(LoadedModel.load(read_bundle(model_dir)))
    started = time.perf_counter()
    for i in range(0, len(records), BATCH):
        live.ingest(records[i : i + BATCH])
    return time.perf_counter() - started, live


def freshness(base: str, rounds: int) -> dict[str, float]:
    """One new hour's weather at EWR, then a flight at EWR in that hour."""
    first = datetime(2013, 11, 1) + timedelta(days=DAYS, hours=2)
    post_s, seen_s = [], []
    with httpx.Client(base_url=base, timeout=30) as client:
        for k in range(rounds):
            hour = first + timedelta(hours=k)
            event = {
                "id": f"fresh-{k}",
                "kind": "weather",
                "origin": "EWR",
                "time_hour": hour.isoformat(),
                "temp": 40.0 + k % 10,
                "visib": 10.0,
            }
            flight = {
                **EXAMPLE_FLIGHT,
                "scheduled_departure": (hour + timedelta(minutes=5)).isoformat(),
            }
            started = time.perf_counter()
            posted = client.post("/v1/events", json={"events": [event]}, headers=AUTH)
            posted_at = time.perf_counter()
            answer = client.post("/predict", json={"flights": [flight]})
            done = time.perf_counter()
            assert posted.json()["accepted"] == 1, posted.text
            assert "temp" not in answer.json()["predictions"][0]["defaults_used"], answer.text
            post_s.append(posted_at - started)
            seen_s.append(done - started)
    return {
        "post_p50_ms": ms(post_s, 0.5),
        "post_p99_ms": ms(post_s, 0.99),
        "post_and_predict_p50_ms": ms(seen_s, 0.5),
        "post_and_predict_p99_ms": ms(seen_s, 0.99),
    }


def assembly(live: LiveFeatures, model_dir: Path, rounds: int) -> dict[str, float]:
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
    args = parser.parse_args()
    records = week_of_events(args.home)
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
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "online.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
