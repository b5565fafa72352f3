"""Benchmark: goodput and refusals at twice the capacity, open loop, against `mlops serve`.

One run: the server's capacity first (32 closed-loop clients, one flight per request), then
an open-loop load (requests fired on a schedule, whatever the answers: `tests/load.py`) at
half the capacity for 5 s, at `--factor` times it for `--seconds`, and at half again for 8 s
(the p99 of each second of it shows how soon the latency is back to normal). Figures are
ratios to the capacity of the same run, since the machine is shared and its speed drifts:
goodput (200s/s) over capacity, and how fast the refusals (503 + Retry-After) come.

    PYTHONPATH=. python benchmarks/overload.py --model-dir MODEL

`--client hey` drives the same two phases with `hey` (Go; `apt install hey`) instead, which
takes less of a shared machine's cores: the capacity from 32 workers unlimited, then
`--workers` workers each limited to its share of `--factor` times it, split among
`--hey-processes` hey processes started a share of a worker's period apart (one process's
workers send together: `hey` below). A hey worker waits for each answer before its next
request (a rate-limited closed loop, not an open one), so faster refusals bring more
requests, up to the rate asked.

`--pin` puts the server (every thread of its process tree) on the first CPU and the client on
the others (`benchmarks/cores.py`), so that neither takes the other's cores: on a 2-core machine the
capacity is then one core's, and the refusals' latency is the server's, not a client's
waiting for a core it shares.

`--edge` puts the stack's edge (HAProxy, infra/edge/haproxy.cfg) in front of the server and
sends the load through it: the server gets at most `--edge-conns` scoring requests at a time,
and the edge refuses what exceeds them and `--edge-queue` waiting. With `--pin` it runs on the
server's CPU, one thread: the capacity is then the pair's on one core. The overload is a
multiple of the best of the capacities measured (the server alone, and 32 and 64 clients
through the edge), or with `--capacity stack` of the better of the two through the edge.

With `--client hey` the JSON also says where the cores went: each process's CPU microseconds
per answered request and the server's mean batch, for each capacity run (the medians) and
for the overload, and the cores each process used per second of the overload.

MODEL: a model folder (`mlops export`, or the one `benchmarks/serving.py` downloads into its
home). Writes benchmarks/results/overload.json and prints the rows for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "benchmarks":
    sys.path[0] = str(ROOT)  # `serving` must be the package, not benchmarks/serving.py

# ruff: noqa: E402
import httpx

from benchmarks.cores import CPUS, pin_client, pin_server
from serving.metrics import SHED_REASONS
from serving.schemas import EXAMPLE_FLIGHT
from tests.load import (
    OpenLoop,
    Outcome,
    closed_loop,
    cpu_seconds,
    percentile,
    post,
    probe,
    rss_bytes,
    run,
)
from tests.processes import Edge, Served, haproxy_edge, metric, mlops_serve

AFTER_S = 8.0  # at half the capacity after the overload, to see the latency settle


def _ms(values: list[float], q: float) -> float:
    return round(percentile(values, q) * 1000, 1)


def p99_by_second(outcomes: list[Outcome]) -> list[float]:
    """p99 of the 200s in each second: how soon the latency is back to normal."""
    start = outcomes[0].due
    seconds: dict[int, list[float]] = {}
    for o in outcomes:
        if o.status == 200:
            seconds.setdefault(int(o.due - start), []).append(o.latency)
    return [round(percentile(seconds.get(s, []), 0.99) * 1000, 1) for s in range(max(seconds) + 1)]


def summary(outcomes: list[Outcome], seconds: float, skip_s: float = 0.0) -> dict:
    """Counts and latencies by status, leaving out the first `skip_s` seconds."""
    start = outcomes[0].due
    kept = [o for o in outcomes if o.due - start >= skip_s]
    span = seconds - skip_s
    ok = [o.latency for o in kept if o.status == 200]
    refused = [o for o in kept if o.status == 503]
    return {
        "offered_per_s": round(len(kept) / span),
        # what the client managed to send: it shares the cores, and past its own limit it
        # has no free connection for the next request (-1), which never reaches the server
        "sent_per_s": round(sum(o.status != -1 for o in kept) / span),
        "ok_per_s": round(len(ok) / span),
        "refused_per_s": round(len(refused) / span),
        "other": sorted({o.status for o in kept} - {200, 503}),
        "other_count": sum(o.status not in (200, 503) for o in kept),
        "refused_without_retry_after": sum(not o.retry_after for o in refused),
        "ok_p50_ms": _ms(ok, 0.5),
        "ok_p99_ms": _ms(ok, 0.99),
        "ok_max_ms": _ms(ok, 1.0),
        "refused_p50_ms": _ms([o.latency for o in refused], 0.5),
        "refused_p99_ms": _ms([o.latency for o in refused], 0.99),
    }


async def measure(port: int, pid: int, args: argparse.Namespace) -> dict:
    host = "127.0.0.1"
    request = post("/predict", {"flights": [EXAMPLE_FLIGHT]})
    closed = await closed_loop(host, port, request, 32, args.capacity_seconds)
    capacity = sum(o.status == 200 for o in closed) / args.capacity_seconds
    load = OpenLoop(host, port, request, max_connections=args.connections)
    await load.warm(args.connections)
    before = await load.run(capacity / 2, 5.0)
    stop = asyncio.Event()
    live = asyncio.create_task(probe(host, port, "/v2/health/live", 0.1, stop))
    rss_start, cpu_start = rss_bytes(pid), (cpu_seconds(pid), cpu_seconds(os.getpid()))
    started = time.monotonic()
    during = await load.run(capacity * args.factor, args.seconds)
    elapsed = time.monotonic() - started
    rss_end, cpu_end = rss_bytes(pid), (cpu_seconds(pid), cpu_seconds(os.getpid()))
    stop.set()
    after = await load.run(capacity / 2, AFTER_S)
    load.close()
    live_s = [seconds for status, seconds in await live]
    return {
        "capacity_per_s": round(capacity),
        "factor": args.factor,
        "seconds": args.seconds,
        "before": summary(before, 5.0, 1.0),
        "during": summary(during, args.seconds, 1.0),
        "after": summary(after, AFTER_S, 1.0),
        "before_p99_ms_by_second": p99_by_second(before),
        "after_p99_ms_by_second": p99_by_second(after),
        "live_p99_ms": _ms(live_s, 0.99),
        "live_max_ms": _ms(live_s, 1.0),
        "rss_mb_start_end": [round(rss_start / 2**20), round(rss_end / 2**20)],
        # cores busy during the overload: the server's and this client's (a server below 1.0
        # was waiting for a core of a shared machine)
        "server_cores": round((cpu_end[0] - cpu_start[0]) / elapsed, 2),
        "client_cores": round((cpu_end[1] - cpu_start[1]) / elapsed, 2),
    }


def hey(
    url: str,
    body: Path,
    workers: int,
    seconds: float,
    rate: float = 0.0,
    processes: int = 1,
) -> list[Outcome]:
    """`hey` against `url` for `seconds`: each worker at most `rate` requests a second (0: no
    limit), the workers split among `processes` hey processes started a share of a worker's
    period apart. A hey process starts its workers' rate tickers together, so they fire
    together: 512 workers at 7 requests a second each send bursts of 512 every 140 ms, and a
    request waits behind its burst even at a server with nothing else to do (RESULTS).
    Staggered processes spread the bursts. Each CSV has a row per request: seconds taken, ...,
    status code, offset from its process's start in seconds (status 0: no answer)."""
    each = max(1, workers // processes)
    command = ["hey", "-z", f"{seconds:g}s", "-c", str(each), "-q", f"{rate:.3f}"]
    command += ["-m", "POST", "-T", "application/json", "-D", str(body), "-o", "csv", url]
    stagger = 1.0 / rate / processes if rate else 0.0
    running = []
    for i in range(processes):
        if i:
            time.sleep(stagger)
        started = time.monotonic()
        running.append((started, subprocess.Popen(command, stdout=subprocess.PIPE, text=True)))
    first = running[0][0]
    outcomes = []
    for started, process in running:
        out, _ = process.communicate()
        if process.returncode:
            raise subprocess.CalledProcessError(process.returncode, command)
        for row in list(csv.reader(out.splitlines()))[1:]:
            taken, status, offset = float(row[0]), int(row[6]), float(row[7])
            offset += started - first
            outcomes.append(Outcome(due=offset, sent=offset, done=offset + taken, status=status))
    return outcomes


def stack_capacity(capacities: dict[str, float]) -> float:
    """The edge and the server together, as their clients meet them: the better of the
    capacities measured through the edge (32 and 64 clients), not the server's alone."""
    return max(c for name, c in capacities.items() if name != "direct")


def batches(server: str) -> tuple[float, float]:
    """The rows the server has scored in batches, and its batches, so far."""
    page = httpx.get(f"{server}/metrics").text
    return metric(page, "mlops_batch_rows_sum"), metric(page, "mlops_batch_rows_count")


@dataclass(frozen=True)
class Spent:
    """The CPU seconds of the server and the edge (by name, as in `pids`) and the server's
    batches, from `since` on."""

    server: str
    pids: dict[str, int]
    cpu: dict[str, float]
    batches: tuple[float, float]

    @classmethod
    def since(cls, server: str, pids: dict[str, int]) -> Spent:
        return cls(server, pids, {n: cpu_seconds(p) for n, p in pids.items()}, batches(server))

    def cpu_seconds(self) -> dict[str, float]:
        return {n: cpu_seconds(p) - self.cpu[n] for n, p in self.pids.items()}

    def batch_rows(self) -> float:
        """The mean rows of the server's batches since."""
        rows, count = (a - b for a, b in zip(batches(self.server), self.batches, strict=True))
        return round(rows / count, 1) if count else 0.0


def us_per_answer(used: dict[str, float], answered: int) -> dict[str, float]:
    """Each process's CPU microseconds per 200: where a core's time goes at capacity and under
    overload (refusals cost the edge's share)."""
    return {name: round(seconds / max(answered, 1) * 1e6, 1) for name, seconds in used.items()}


def measure_hey(
    base: str, server: str, pids: dict[str, int], args: argparse.Namespace, direct: str = ""
) -> dict:
    """The capacity (32 workers, no limit) and the overload through `base`. With `direct` (the
    server itself, when `base` is the edge) the capacity is the better of the two: a proxy's
    hop can make 32 clients too few to keep the server busy, and the ratio must not gain
    from that. `server`: the server's own address, whose batches during the overload are
    reported. `pids`: the processes whose cores are reported, by name ("server", "edge")."""
    with tempfile.NamedTemporaryFile("wb", suffix=".json") as body:
        body.write(json.dumps({"flights": [EXAMPLE_FLIGHT]}).encode())
        body.flush()
        url = f"{base}/predict"
        runs = [("through", base, 32)]
        if direct:
            runs += [("direct", direct, 32), ("through_64", base, 64)]
        measured: dict[str, list[float]] = {name: [] for name, _, _ in runs}
        spent: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in runs}
        for _ in range(args.capacity_rounds):  # interleaved: the machine's speed drifts
            for name, at, clients in runs:
                before = Spent.since(server, pids)
                closed = hey(f"{at}/predict", Path(body.name), clients, args.capacity_seconds)
                answered = sum(o.status == 200 for o in closed)
                measured[name].append(answered / args.capacity_seconds)
                per_ok = us_per_answer(before.cpu_seconds(), answered)
                spent[name].append(per_ok | {"batch_rows": before.batch_rows()})
        capacities = {name: statistics.median(values) for name, values in measured.items()}
        capacity = max(capacities.values())
        if args.capacity == "stack":
            capacity = stack_capacity(capacities)
        offered = capacity * args.factor
        rate = offered / args.workers
        before = Spent.since(server, pids)
        during = hey(url, Path(body.name), args.workers, args.seconds, rate, args.hey_processes)
        used, rows = before.cpu_seconds(), before.batch_rows()
    # per second of the load: hey prints its rows after it, for seconds, at a quiet server
    cores = {name: seconds / args.seconds for name, seconds in used.items()}
    during.sort(key=lambda o: o.due)
    figures = summary(during, args.seconds, 1.0)
    figures["offered_per_s"] = round(offered)  # hey's rows are the requests it sent
    figures["batch_rows_mean"] = rows
    figures["cpu_us_per_ok"] = us_per_answer(used, sum(o.status == 200 for o in during))
    del figures["refused_without_retry_after"]  # hey does not report headers
    return {
        "client": "hey",
        "capacity_per_s": round(capacity),
        "capacity_of": args.capacity if direct else "server",
        "capacities_per_s": {name: round(c) for name, c in capacities.items()},
        "capacity_runs_per_s": {name: [round(v) for v in vs] for name, vs in measured.items()},
        "capacity_cpu_us_per_ok": {
            name: {key: statistics.median(run[key] for run in each) for key in each[0]}
            for name, each in spent.items()
        },
        "factor": args.factor,
        "seconds": args.seconds,
        "workers": args.workers,
        "hey_processes": args.hey_processes,
        "pinned": args.pin,
        "during": figures,
        **{f"{name}_cores": round(share, 2) for name, share in cores.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--factor", type=float, default=2.0, help="times the capacity")
    parser.add_argument("--seconds", type=float, default=30.0, help="of overload")
    parser.add_argument("--capacity-seconds", type=float, default=5.0)
    parser.add_argument(
        "--capacity-rounds", type=int, default=3, help="hey: capacity runs, their median"
    )
    parser.add_argument("--connections", type=int, default=1024)
    parser.add_argument("--client", choices=["python", "hey"], default="python")
    parser.add_argument("--workers", type=int, default=512, help="hey's, in the overload")
    parser.add_argument(
        "--hey-processes", type=int, default=8, help="the workers split among, staggered"
    )
    parser.add_argument("--pin", action="store_true", help="server on CPU 0, client on the rest")
    parser.add_argument("--edge", action="store_true", help="through HAProxy, the stack's edge")
    parser.add_argument("--edge-conns", type=int, default=32, help="scoring requests at once")
    parser.add_argument("--edge-queue", type=int, default=32, help="waiting at the edge")
    parser.add_argument(
        "--capacity",
        choices=["best", "stack"],
        default="best",
        help="with --edge, what the overload is a multiple of: the best of the three "
        "capacities (the server alone, when a hop costs its shared core more than it gains "
        "it), or the stack's (through the edge, 32 or 64 clients)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/overload.json")
    args = parser.parse_args()
    env = os.environ | {"MLOPS_SERVE__POLL_INTERVAL_S": "0"}
    with (
        tempfile.TemporaryDirectory() as home,
        mlops_serve(
            "--model-dir", str(args.model_dir.resolve()), options=("--home", home), env=env
        ) as served,
        ExitStack() as stack,
    ):
        target: Served | Edge = served  # what the load is sent to
        if args.edge:
            cpus = {CPUS[0]} if args.pin else None
            edge = stack.enter_context(
                haproxy_edge(served.port, args.edge_conns, args.edge_queue, cpus)
            )
            target = edge
        if args.pin:
            pin_server(served.process.pid)
            if args.edge:
                pin_server(edge.process.pid)
            pin_client()
        started = time.monotonic()
        if args.client == "hey":
            direct = served.base if args.edge else ""
            pids = {"server": served.process.pid}
            if args.edge:
                pids["edge"] = edge.process.pid
            result = measure_hey(target.base, served.base, pids, args, direct)
        else:
            result = run(measure(target.port, served.process.pid, args))
        metrics = httpx.get(f"{served.base}/metrics").text
        if args.edge:
            result["edge"] = {"conns": args.edge_conns, "queue": args.edge_queue}
            result["edge_refused"] = edge.refused()
        result["wall_s"] = round(time.monotonic() - started)
    result["shed_metrics"] = {
        reason: metric(metrics, "mlops_shed_requests_total", reason=reason)
        for reason in SHED_REASONS
    }
    during = result["during"]
    result["goodput_over_capacity"] = round(during["ok_per_s"] / result["capacity_per_s"], 2)
    if "capacities_per_s" in result and args.edge:
        stack = stack_capacity(result["capacities_per_s"])
        result["goodput_over_stack"] = round(during["ok_per_s"] / stack, 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    if args.client == "hey":
        print(
            f"| {result['capacity_per_s']:,} | {during['offered_per_s']:,} "
            f"| {during['sent_per_s']:,} | {during['ok_per_s']:,} "
            f"| **{result['goodput_over_capacity']:.2f}x** | {during['refused_per_s']:,} "
            f"| {during['refused_p50_ms']} / **{during['refused_p99_ms']}** "
            f"| {during['ok_p50_ms']} / {during['ok_p99_ms']} | {result['server_cores']} |"
        )
        return
    print(
        f"| {result['capacity_per_s']:,} | {during['offered_per_s']:,} | {during['ok_per_s']:,} "
        f"| **{result['goodput_over_capacity']:.2f}x** | {during['refused_per_s']:,} "
        f"| {during['refused_p50_ms']} / **{during['refused_p99_ms']}** "
        f"| {during['ok_p50_ms']} / {during['ok_p99_ms']} / {during['ok_max_ms']} "
        f"| {result['live_max_ms']} | {result['before']['ok_p99_ms']} "
        f"| {result['after']['ok_p99_ms']} |"
    )


if __name__ == "__main__":
    main()
