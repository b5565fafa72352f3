"""Benchmark: /predict throughput with the prediction log on and off, one server each.

    PYTHONPATH=. python benchmarks/prediction_log.py --model-dir MODEL [--rounds 3]

MODEL: a model folder (`mlops export`). Alternating rounds, each a fresh `mlops serve
--model-dir MODEL` (one worker, its own MLOPS_HOME) with `MLOPS_PREDICTIONS__ENABLED` true or
false, warmed up, then `--seconds` of concurrency 32, one flight a request, from
`benchmarks/serving.py`'s load generator (wrk where installed); after each logged round, the
rows the log holds against the requests answered. Prints the medians and their ratio (goal,
issue 15: at least 0.95x) and writes benchmarks/results/prediction_log.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "benchmarks":
    sys.path[0] = str(ROOT)  # `serving` must be the package, not benchmarks/serving.py

# ruff: noqa: E402
import numpy as np
import pandas as pd

from benchmarks.online import _bench_serving
from pipelines.layout import DataLayout
from serving.schemas import EXAMPLE_FLIGHT
from tests.processes import clean_env, mlops_serve


def one_round(model_dir: Path, logged: bool, seconds: float, client: str) -> dict:
    bench = _bench_serving()
    body = json.dumps({"flights": [EXAMPLE_FLIGHT]}).encode()
    with tempfile.TemporaryDirectory() as home:
        env = clean_env(
            MLOPS_HOME=home,
            MLOPS_PREDICTIONS__ENABLED=str(logged).lower(),
            PYTHONPATH=str(ROOT),
        )
        with mlops_serve("--model-dir", str(model_dir), env=env) as served:
            bench.load(f"{served.base}/predict", body, 32, 2, client)  # warm-up
            result = bench.load(f"{served.base}/predict", body, 32, seconds, client)
        files = sorted(DataLayout(Path(home)).predictions.glob("date=*/*.parquet"))
        result["rows_logged"] = sum(len(pd.read_parquet(f)) for f in files)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path, required=True)
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
        "rounds": rounds,
    }
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "prediction_log.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
