"""Soak: a fixed request rate against `mlops serve` for `--minutes`, a forced reload every
minute, and the server's resources sampled all along. A leak shows as a slope that warm-up
does not explain: resident memory, open files (/proc/<pid>/fd) or threads that keep growing
with each reload or with the requests served.

    PYTHONPATH=. python benchmarks/soak.py --model-dir MODEL --minutes 30

MODEL: a model folder (`mlops export`, or the one `benchmarks/serving.py` downloads). The
load is open loop (`tests/load.py`), one flight per request; the reloads go through
/admin/reload with `{"force": true}` and a token made for the run. Every `--sample-s` it
records RSS, open files, threads and the queue's depth (/metrics); at the end it prints the
slopes per minute after `--warmup-minutes` (least squares), the answers by status and the
latency per minute. Writes benchmarks/results/soak.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "benchmarks":
    sys.path[0] = str(ROOT)  # `serving` must be the package, not benchmarks/serving.py

# ruff: noqa: E402
from serving.schemas import EXAMPLE_FLIGHT
from tests.load import OpenLoop, Outcome, get, percentile, post, request_once, rss_bytes, run
from tests.processes import mlops_serve


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def open_files(pid: int) -> int:
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 2:
        return float("nan")
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 60 if var else float("nan")


async def _metric(port: int, names: tuple[str, ...]) -> dict[str, float]:
    """Some gauges from /metrics, read over a raw connection (the body is small)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(get("/metrics").replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    body = (await reader.read()).decode()
    writer.close()
    found = {}
    for line in body.splitlines():
        name, _, value = line.partition(" ")
        if name in names:
            found[name] = float(value)
    return found


async def soak(port: int, pid: int, token: str, args: argparse.Namespace) -> dict:
    host = "127.0.0.1"
    seconds = args.minutes * 60
    load = OpenLoop(host, port, post("/predict", {"flights": [EXAMPLE_FLIGHT]}))
    await load.warm(16)
    start = time.monotonic()
    samples: list[dict] = []
    reloads: list[dict] = []
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            queue = await _metric(port, ("mlops_queue_rows", "mlops_queue_requests"))
            samples.append(
                {
                    "t": round(time.monotonic() - start, 1),
                    "rss_mb": round(rss_bytes(pid) / 2**20, 1),
                    "open_files": open_files(pid),
                    "threads": threads(pid),
                    "queue_rows": queue.get("mlops_queue_rows", 0.0),
                    "queue_requests": queue.get("mlops_queue_requests", 0.0),
                }
            )
            await asyncio.sleep(args.sample_s)

    async def reload_every_minute() -> None:
        request = post("/admin/reload", {"force": True}, {"Authorization": f"Bearer {token}"})
        while True:
            await asyncio.sleep(args.reload_every_s)
            if stop.is_set():
                return
            outcome = await request_once(host, port, request)
            reloads.append(
                {
                    "t": round(outcome.due - start, 1),
                    "status": outcome.status,
                    "seconds": round(outcome.latency, 2),
                }
            )

    tasks = [asyncio.create_task(sample()), asyncio.create_task(reload_every_minute())]
    outcomes = await load.run(args.rate, seconds)
    stop.set()
    tasks[1].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    load.close()
    return {"samples": samples, "reloads": reloads, "minutes": per_minute(outcomes, start)}


def per_minute(outcomes: list[Outcome], start: float) -> list[dict]:
    minutes: dict[int, list[Outcome]] = {}
    for outcome in outcomes:
        minutes.setdefault(int((outcome.due - start) // 60), []).append(outcome)
    rows = []
    for minute, kept in sorted(minutes.items()):
        ok = [o.latency for o in kept if o.status == 200]
        rows.append(
            {
                "minute": minute,
                "requests": len(kept),
                "ok": len(ok),
                "other": {
                    str(status): sum(o.status == status for o in kept)
                    for status in {o.status for o in kept} - {200}
                },
                "p50_ms": round(percentile(ok, 0.5) * 1000, 1),
                "p99_ms": round(percentile(ok, 0.99) * 1000, 1),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--reload-every-s", type=float, default=60.0)
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--warmup-minutes", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/soak.json")
    args = parser.parse_args()
    token = secrets.token_urlsafe(16)
    env = os.environ | {"MLOPS_SERVE__ADMIN_TOKEN": token, "MLOPS_SERVE__POLL_INTERVAL_S": "0"}
    with (
        tempfile.TemporaryDirectory() as home,
        mlops_serve(
            "--model-dir", str(args.model_dir.resolve()), options=("--home", home), env=env
        ) as served,
    ):
        result = run(soak(served.port, served.process.pid, token, args))
    result["exit_code"] = served.returncode
    warm = [s for s in result["samples"] if s["t"] >= args.warmup_minutes * 60]
    result["slopes_per_minute_after_warmup"] = {
        key: round(slope_per_minute([(s["t"], s[key]) for s in warm]), 3)
        for key in ("rss_mb", "open_files", "threads")
    }
    result["args"] = {k: str(v) for k, v in vars(args).items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))

    first, last = warm[0] if warm else {}, result["samples"][-1]
    print(f"{args.minutes:g} min at {args.rate:g} requests/s, {len(result['reloads'])} reloads")
    print("reloads (t s, status, seconds):", [tuple(r.values()) for r in result["reloads"]])
    for key, slope in result["slopes_per_minute_after_warmup"].items():
        print(f"{key}: {first.get(key)} after warm-up -> {last[key]} at the end; {slope}/min")
    depths = [s["queue_rows"] for s in result["samples"]]
    print(f"queue rows: max {max(depths):g}, mean {sum(depths) / len(depths):.2f}")
    for row in result["minutes"]:
        print(row)
    print(f"server exit code {served.returncode}")


if __name__ == "__main__":
    main()
