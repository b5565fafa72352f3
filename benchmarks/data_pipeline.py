"""Benchmark: the feature graph on Dask against a single-process pandas run of the same features.

For each scale (1x = the real 336,776 flights; Nx = N times as many synthetic flights) it
ingests the data once, then builds the features twice, each in a fresh child process whose
whole process tree (Dask's scheduler and workers included) is sampled for RSS:

    python benchmarks/data_pipeline.py --scales 1 10 30

Writes benchmarks/results/data_pipeline.json and prints the rows for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REAL_ROWS = 336_776
ROOT = Path(__file__).resolve().parents[1]


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for p in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a process that just exited
            total += p.memory_info().rss
    return total


def run_child(args: list[str]) -> tuple[dict, int, float]:
    """Run a child, sampling its process tree's RSS every 50 ms; (its report, peak, wall)."""
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        handle = psutil.Process(child.pid)
        while not done.is_set():
            try:
                peak = max(peak, tree_rss(handle))
            except psutil.Error:
                break
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = child.communicate()
    done.set()
    sampler.join()
    if child.returncode:
        raise SystemExit(f"child {args} failed with {child.returncode}")
    return json.loads(out.strip().splitlines()[-1]), peak, time.perf_counter() - start


def child_main(variant: str, home: Path, workers: int) -> None:
    from pipelines.layout import DataLayout
    from pipelines.partitions import plan_partitions
    from pipelines.splits import SplitPlan

    layout = DataLayout(home)
    start = time.perf_counter()
    if variant == "pandas":
        from pipelines.features import build_features_pandas

        report = build_features_pandas(layout, SplitPlan())
    else:
        from pipelines.cluster import ClusterConfig, dask_client
        from pipelines.features import build_feature_tables

        with dask_client(ClusterConfig(n_workers=workers)) as client:
            report = build_feature_tables(layout, SplitPlan(), client)
    seconds = time.perf_counter() - start
    rows = sum(p.rows for p in plan_partitions(layout))
    labelled = sum(s.rows for s in report.spec.splits.values())
    print(
        json.dumps(
            {
                "seconds": seconds,
                "rows": rows,
                "labelled": labelled,
                "partitions": report.partitions,
            }
        )
    )


def prepare(scale: int, home: Path) -> dict:
    """Ingest the real data (1x) or scale x synthetic flights; returns the ingest figures."""
    from pipelines.ingest import ingest
    from pipelines.layout import DataLayout

    layout = DataLayout(home)
    if layout.months("flights"):
        return {"ingest_seconds": None}
    sources = {}
    if scale != 1:
        import pandas as pd

        from pipelines.sources import bundled_source
        from pipelines.synth import synthesize

        target = home / "synth"
        if not target.exists():
            synthesize(pd.read_csv(bundled_source("flights")), scale * REAL_ROWS, target)
        sources["flights"] = target
    start = time.perf_counter()
    report = ingest(layout, sources)
    seconds = time.perf_counter() - start
    flights = report.tables["flights"]
    return {"ingest_seconds": seconds, "ingest_rows_per_s": flights.rows_in / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10, 30])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mlops-bench"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--child", choices=["pandas", "dask"])
    parser.add_argument("--home", type=Path)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, args.home, args.workers)
        return

    results = []
    for scale in args.scales:
        home = args.workdir / f"x{scale}"
        figures = {"scale": scale, **prepare(scale, home)}
        for variant in ("pandas", "dask"):
            report, peak, wall = run_child(
                ["--child", variant, "--home", str(home), "--workers", str(args.workers)]
            )
            figures[variant] = {
                "seconds": report["seconds"],
                "wall_seconds": wall,
                "rows": report["rows"],
                "rows_per_s": report["rows"] / report["seconds"],
                "peak_rss_mb": peak / 2**20,
                "partitions": report["partitions"],
            }
        figures["dask_speedup"] = figures["pandas"]["seconds"] / figures["dask"]["seconds"]
        figures["dask_memory_ratio"] = (
            figures["dask"]["peak_rss_mb"] / figures["pandas"]["peak_rss_mb"]
        )
        results.append(figures)
        print(json.dumps(figures), flush=True)

    out = ROOT / "benchmarks" / "results" / "data_pipeline.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(
        "\n| scale | rows | pandas s | pandas rows/s | pandas peak MB | dask s | dask rows/s "
        "| dask peak MB | partitions | dask/pandas throughput | dask/pandas memory |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        p, d = r["pandas"], r["dask"]
        print(
            f"| {r['scale']}x | {p['rows']:,} | {p['seconds']:.1f} | {p['rows_per_s']:,.0f} "
            f"| {p['peak_rss_mb']:,.0f} | {d['seconds']:.1f} | {d['rows_per_s']:,.0f} "
            f"| {d['peak_rss_mb']:,.0f} | {d['partitions']} | {r['dask_speedup']:.2f}x "
            f"| {r['dask_memory_ratio']:.2f} |"
        )


if __name__ == "__main__":
    main()
