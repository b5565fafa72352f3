"""Benchmark: /predict throughput with the prediction log and the outcome join on and off,
one server each; and the delay from an arrival event to the realized metrics moving.

    PYTHONPATH=. python benchmarks/prediction_log.py --model-dir MODEL --home HOME [--rounds 3]

MODEL: a model folder (`mlops export`); HOME: an MLOPS_HOME whose bronze holds November
(`mlops data ingest`). Alternating rounds, each a fresh `mlops serve --model-dir MODEL` (one
worker, its own MLOPS_HOME, events on in both) with `MLOPS_PREDICTIONS__ENABLED` true (the log,
and realized quality joining its tables) or false, warmed up, then `--seconds` of concurrency
32, one flight a request, from `benchmarks/serving.py`'s load generator (wrk where installed);
after each logged round, the rows the log holds against the requests answered. Then one
server replays November 1 to 12:00 as events, predicts the day's flights, and sends the rest
of the day's events one at a time: for each arrival of a flight it predicted, the time from
sending it to `mlops_matured_predictions_total` moving in /metrics. Prints the medians, their
ratio (goal, issue 15: at least 0.95x) and the delay's percentiles; writes
benchmarks/results/prediction_log.json.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "benchmarks":
    sys.path[0] = str(ROOT)  # `serving` must be the package, not benchmarks/serving.py

# ruff: noqa: E402
import httpx
import numpy as np
import pandas as pd

from benchmarks.online import _bench_serving
from mlops.flows.replay import _as_requests, _bronze_as_events, _minute
from mlops.settings import Settings
from pipelines.event_validation import as_records
from pipelines.layout import DataLayout
from serving.schemas import EXAMPLE_FLIGHT
from tests.processes import clean_env, mlops_serve

TOKEN = "bench-events-token"
MATURED = re.compile(r"^mlops_matured_predictions_total\{[^}]*\} (\S+)$", re.M)


def one_round(model_dir: Path, logged: bool, seconds: float, client: str) -> dict:
    bench = _bench_serving()
    body = json.dumps({"flights": [EXAMPLE_FLIGHT]}).encode()
    with tempfile.TemporaryDirectory() as home:
        env = clean_env(
            MLOPS_HOME=home,
            MLOPS_PREDICTIONS__ENABLED=str(logged).lower(),
            MLOPS_EVENTS__TOKEN=TOKEN,  # the online store on in both: the join needs it
            PYTHONPATH=str(ROOT),
        )
        with mlops_serve("--model-dir", str(model_dir), env=env) as served:
            bench.load(f"{served.base}/predict", body, 32, 2, client)  # warm-up
            result = bench.load(f"{served.base}/predict", body, 32, seconds, client)
        files = sorted(DataLayout(Path(home)).predictions.glob("date=*/*.parquet"))
        result["rows_logged"] = sum(len(pd.read_parquet(f)) for f in files)
    return result


def matured(client: httpx.Client) -> float:
    return sum(float(v) for v in MATURED.findall(client.get("/metrics").text))


def arrival_delay(model_dir: Path, bronze_home: Path, arrivals: int) -> dict:
    """Seconds from sending an arrival event to the realized metrics counting it."""
    with tempfile.TemporaryDirectory() as home:
        shutil.copytree(bronze_home / "data" / "bronze", Path(home) / "data" / "bronze")
        env = clean_env(
            MLOPS_HOME=home,
            MLOPS_EVENTS__TOKEN=TOKEN,
            MLOPS_EVENTS__SINCE="2013-11-01T00:00",
            PYTHONPATH=str(ROOT),
        )
        events, flights = _bronze_as_events(Settings(home=Path(home)), "2013-11", "2013-11")
        noon = _minute(pd.Timestamp("2013-11-01 12:00"))
        day = flights[flights["scheduled_departure"] < pd.Timestamp("2013-11-02")]
        records = as_records(events[events["observed"] < noon + 24 * 60])
        before = int((events["observed"] <= noon).sum())
        headers = {"Authorization": f"Bearer {TOKEN}"}
        predicted = set(zip(day["carrier"], day["flight"], day["origin"], strict=True))
        delays, posts = [], []
        with (
            mlops_serve("--model-dir", str(model_dir), env=env) as served,
            httpx.Client(base_url=served.base, timeout=60) as client,
        ):
            for i in range(0, before, 1000):
                client.post(
                    "/v1/events",
                    json={"events": records[i : min(before, i + 1000)]},
                    headers=headers,
                ).raise_for_status()
            requests = _as_requests(day)
            for i in range(0, len(requests), 1000):
                client.post("/predict", json={"flights": requests[i : i + 1000]}).raise_for_status()
            time.sleep(2.5)  # past the log's flush: the predictions are in the join
            for record in records[before:]:
                measured = (
                    record["kind"] == "arrived"
                    and len(delays) < arrivals
                    and (record["carrier"], record["flight"], record["origin"]) in predicted
                )
                seen = matured(client) if measured else 0.0
                started = time.perf_counter()
                client.post("/v1/events", json={"events": [record]}, headers=headers)
                posted = time.perf_counter()
                if measured:
                    while matured(client) <= seen:
                        pass
                    delays.append(time.perf_counter() - started)
                    posts.append(posted - started)
    ms = np.array(delays) * 1000
    return {
        "arrivals": len(delays),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "max_ms": round(float(ms.max()), 2),
        "post_p50_ms": round(float(np.percentile(np.array(posts) * 1000, 50)), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--home", type=Path, required=True, help="an MLOPS_HOME with bronze")
    parser.add_argument("--arrivals", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--client", choices=["wrk", "aiohttp"], default="wrk" if shutil.which("wrk") else "aiohttp"
    )
    args = parser.parse_args()
    rounds: dict[str, list[dict]] = {"off": [], "on": []}
    for _ in range(args.rounds):
        for name in rounds:
            rounds[name].append(one_round(args.model_dir, name == "on", args.seconds, args.client))
    median = {
        name: float(np.median([r["requests_per_s"] for r in each])) for name, each in rounds.items()
    }
    result = {
        "client": args.client,
        "concurrency": 32,
        "requests_per_s": {name: round(value) for name, value in median.items()},
        "on_over_off": round(median["on"] / median["off"], 3),
        "p99_ms": {
            name: round(float(np.median([r["p99_ms"] for r in each])), 1)
            for name, each in rounds.items()
        },
        "arrival_to_metric": arrival_delay(args.model_dir, args.home, args.arrivals),
        "rounds": rounds,
    }
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "prediction_log.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
