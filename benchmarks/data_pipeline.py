"""Benchmark: the feature graph on Dask against a single-process pandas run of the same features.

For each scale (1x = the real 336,776 flights; Nx = N times as many synthetic flights) it
ingests the data once, then builds the features twice, each in a fresh child process whose
whole process tree (Dask's scheduler and workers included) is sampled for RSS:

    python benchmarks/data_pipeline.py --scales 1 10 30

Then the same table by Polars and by DuckDB (`benchmarks/engines.py`, `--engines`), each in a
child sampled the same way and compared with the table the Dask child published.

Writes benchmarks/results/data_pipeline.json and prints the rows for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from pipelines.layout import DataLayout

REAL_ROWS = 336_776
ENGINES = ("polars", "duckdb")  # benchmarks/engines.py: the same table, not the project's code
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


def child_main(variant: str, home: Path, workers: int, duckdb_memory: str | None) -> None:
    from pipelines.layout import DataLayout
    from pipelines.partitions import plan_partitions
    from pipelines.splits import SplitPlan

    layout = DataLayout(home)
    if variant in ENGINES:
        engine_child(variant, layout, duckdb_memory)
        return
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


def engine_child(variant: str, layout: DataLayout, duckdb_memory: str | None) -> None:
    """Polars or DuckDB (benchmarks/engines.py): the same tables in memory, compared with the
    ones the Dask child just published in this home."""
    from engines import build_duckdb, build_polars, compare

    from pipelines.layout import SPLITS
    from pipelines.partitions import plan_partitions
    from pipelines.storage import read_parquet_folder

    build = {
        "polars": build_polars,
        "duckdb": partial(build_duckdb, memory_limit=duckdb_memory, spill_to=layout.home / "spill"),
    }[variant]
    start = time.perf_counter()
    tables = build(layout.home)
    seconds = time.perf_counter() - start
    # the build's own peak (one process; the comparison below reads the Dask tables as well)
    build_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    verdicts = {
        split: compare(tables[split], read_parquet_folder(layout.split(split))) for split in SPLITS
    }
    rows = sum(p.rows for p in plan_partitions(layout))
    labelled = sum(len(t) for t in tables.values())
    figures = {"seconds": seconds, "rows": rows, "labelled": labelled, "equal": verdicts}
    print(json.dumps(figures | {"build_peak": build_peak}))


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
    parser.add_argument("--child", choices=["pandas", "dask", *ENGINES])
    parser.add_argument("--engines", nargs="*", default=list(ENGINES), choices=ENGINES)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["pandas", "dask"],
        choices=["pandas", "dask"],
        help="the project's builds to run (100x: dask alone; pandas would need ~55 GB)",
    )
    parser.add_argument("--home", type=Path)
    parser.add_argument(
        "--duckdb-memory-limit", help="e.g. 8GB: DuckDB spills past it (default: its own, 80%%)"
    )
    args = parser.parse_args()
    if args.child:
        child_main(args.child, args.home, args.workers, args.duckdb_memory_limit)
        return

    results = []
    for scale in args.scales:
        home = args.workdir / f"x{scale}"
        figures = {"scale": scale, **prepare(scale, home)}
        for variant in (*args.variants, *args.engines):  # the engines compare with dask's
            command = ["--child", variant, "--home", str(home), "--workers", str(args.workers)]
            if args.duckdb_memory_limit:
                command += ["--duckdb-memory-limit", args.duckdb_memory_limit]
            report, peak, wall = run_child(command)
            figures[variant] = {
                "seconds": report["seconds"],
                "wall_seconds": wall,
                "rows": report["rows"],
                "rows_per_s": report["rows"] / report["seconds"],
                # an engine's child compares its tables afterwards: its build's own peak
                "peak_rss_mb": report.get("build_peak", peak) / 2**20,
                "child_peak_rss_mb": peak / 2**20,
            } | {key: report[key] for key in ("partitions", "equal") if key in report}
        if "pandas" in figures and "dask" in figures:
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
        p, d = r.get("pandas"), r.get("dask")  # a variant not run: "-"
        rows = (p or d or {}).get("rows", 0)
        ratios = [f"{r['dask_speedup']:.2f}x", f"{r['dask_memory_ratio']:.2f}"] if p and d else []
        cells = [
            f"{r['scale']}x",
            f"{rows:,}",
            *_figures(p),
            *_figures(d),
            str(d["partitions"]) if d else "-",
            *(ratios or ["-", "-"]),
        ]
        print(f"| {' | '.join(cells)} |")
    engines = [name for name in ENGINES if name in results[0]]
    if engines:
        print(
            "\n| scale | engine | s | rows/s | peak MB | / pandas throughput | / dask throughput "
            "| equal to the Dask build |"
        )
        print("|---|---|---|---|---|---|---|---|")
    for r in results:
        for name in engines:
            e = r[name]
            equal = "yes" if set(e["equal"].values()) == {"equal"} else json.dumps(e["equal"])
            print(
                f"| {r['scale']}x | {name} | {e['seconds']:.1f} | {e['rows_per_s']:,.0f} "
                f"| {e['peak_rss_mb']:,.0f} "
                f"| {_ratio(r, 'pandas', e)} | {_ratio(r, 'dask', e)} | {equal} |"
            )


def _figures(variant: dict | None) -> list[str]:
    """Seconds, rows/s and peak MB of a variant, or dashes where it was not run."""
    if not variant:
        return ["-", "-", "-"]
    seconds, speed, peak = variant["seconds"], variant["rows_per_s"], variant["peak_rss_mb"]
    return [f"{seconds:.1f}", f"{speed:,.0f}", f"{peak:,.0f}"]


def _ratio(figures: dict, baseline: str, engine: dict) -> str:
    """The engine's throughput over `baseline`'s, or a dash where that was not run."""
    if baseline not in figures:
        return "-"
    return f"{figures[baseline]['seconds'] / engine['seconds']:.2f}x"


if __name__ == "__main__":
    main()
