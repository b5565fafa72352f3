"""Overload against the real `mlops serve`: open-loop load at twice the capacity measured in
the same run (32 closed-loop clients). The excess is refused with 503 + Retry-After and
counted in /metrics, what is accepted waits no longer than the deadline, memory stays flat,
liveness stays fast, and the latency is back to normal within a second of the overload's end.

The old server (an unbounded queue, no admission) fails it: nothing is refused, the queue and
the latency grow for as long as the overload lasts, and liveness waits behind the backlog.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pandas as pd
import pytest

from serving.bundle import Bundle
from tests.load import OpenLoop, Outcome, closed_loop, percentile, post, probe, rss_bytes, run
from tests.processes import Served, metric, mlops_serve, samples

from .conftest import as_requests

DEADLINE_MS = 250
CONNECTIONS = 512  # about twice what the overload keeps in flight when the server sheds


@dataclass(frozen=True)
class Overload:
    capacity: float  # answers/s of 32 closed-loop clients
    before: list[Outcome]  # a third of the capacity, open loop
    during: list[Outcome]  # twice the capacity
    after: list[Outcome]  # a third of the capacity again
    live: list[tuple[int, float]]  # /v2/health/live during the overload
    rss: list[tuple[float, int]]  # (seconds into the overload, bytes)
    shed_counted: float  # mlops_shed_requests_total, all reasons
    waits: dict[str, float]  # mlops_queue_wait_seconds_bucket by `le`, and "count"


async def _sample_rss(pid: int, stop: asyncio.Event, into: list[tuple[float, int]]) -> None:
    start = time.monotonic()
    while not stop.is_set():
        into.append((time.monotonic() - start, rss_bytes(pid)))
        await asyncio.sleep(0.5)


def overload(served: Served, request: bytes, seconds: float) -> Overload:
    host, port = "127.0.0.1", served.port

    async def main() -> Overload:
        measured = await closed_loop(host, port, request, 32, 2.0)
        capacity = sum(o.status == 200 for o in measured) / 2.0
        load = OpenLoop(host, port, request, max_connections=CONNECTIONS)
        await load.warm(CONNECTIONS)
        before = await load.run(capacity / 3, 2.0)
        stop = asyncio.Event()
        live = asyncio.create_task(probe(host, port, "/v2/health/live", 0.1, stop))
        rss: list[tuple[float, int]] = []
        sampler = asyncio.create_task(_sample_rss(served.process.pid, stop, rss))
        during = await load.run(capacity * 2, seconds)
        stop.set()
        await sampler
        after = await load.run(capacity / 3, 3.0)
        load.close()
        return Overload(capacity, before, during, after, await live, rss, 0.0, {})

    result = run(main())
    metrics = httpx.get(f"{served.base}/metrics").text
    counted = metric(metrics, "mlops_shed_requests_total")
    waits = {b.labels["le"]: b.value for b in samples(metrics, "mlops_queue_wait_seconds_bucket")}
    waits["count"] = metric(metrics, "mlops_queue_wait_seconds_count")
    return replace(result, shed_counted=counted, waits=waits)


def _latencies(outcomes: list[Outcome], status: int = 200, since: float = 0.0) -> list[float]:
    """From when each was written: the client shares the cores with the server, and when it
    falls behind its schedule, that delay is its own (benchmarks/overload.py counts it)."""
    start = outcomes[0].due
    return [o.server_latency for o in outcomes if o.status == status and o.due - start >= since]


def describe(result: Overload, seconds: float) -> str:
    """The run in a line, for the failure messages."""
    during = result.during
    refused = [o.server_latency for o in during if o.status == 503]
    return (
        f"capacity {result.capacity:.0f}/s; during: "
        f"{sum(o.status == 200 for o in during) / seconds:.0f}/s accepted, "
        f"{len(refused) / seconds:.0f}/s refused (p99 {percentile(refused, 0.99) * 1000:.0f} "
        f"ms), {sum(o.status == -1 for o in during)} without a free connection"
    )


def check(result: Overload, seconds: float) -> None:
    print(describe(result, seconds))  # noqa: T201 (shown with the failure)
    everything = result.before + result.during + result.after
    # -1: all the client's connections were waiting. The old server keeps that many requests
    # queued; here it happens only when the client itself cannot keep up (it shares the
    # machine's cores with the server), which the latency bounds below tell apart.
    statuses = {o.status for o in everything} - {-1}
    assert statuses <= {200, 503}, f"answers other than 200 and 503 (0: none): {statuses}"
    refused = [o for o in everything if o.status == 503]
    assert refused, f"nothing was refused at {2 * result.capacity:.0f} requests/s"
    assert all(o.retry_after for o in refused), "a 503 without Retry-After"
    assert result.shed_counted == len(refused), "every refusal is counted in /metrics"

    accepted = _latencies(result.during)
    # Goodput is a figure of benchmarks/overload.py: here the client shares the two cores
    # with the server (and other work), so the test asks only that work still gets done.
    assert accepted, "nothing was accepted during the overload"
    # The queue's delay, as the server sees it: no batch took a request older than the
    # deadline (the bucket of DEADLINE_MS holds every observation).
    assert result.waits.get(str(DEADLINE_MS / 1000)) == result.waits["count"] > 0, result.waits
    # As the client sees it, the wait in the sockets adds to that: bounded too, though more
    # loosely on a machine whose cores the client, the server and other work share.
    p99 = percentile(accepted, 0.99)
    assert p99 < 4 * DEADLINE_MS / 1000, f"accepted requests' p99 {p99 * 1000:.0f} ms"

    live = result.live
    assert live and all(status == 200 for status, _ in live)
    slowest = max(seconds for _, seconds in live)
    assert slowest < 4 * DEADLINE_MS / 1000, f"liveness took {slowest * 1000:.0f} ms"

    settled = [rss for at, rss in result.rss if at >= 1.0]
    growth = (max(settled) - settled[0]) / 2**20
    assert growth < 32, f"RSS grew {growth:.0f} MiB during the overload"

    normal = percentile(_latencies(result.before, since=0.5), 0.99)
    recovered = percentile(_latencies(result.after, since=1.0), 0.99)
    assert recovered < max(3 * normal, normal + 0.05), (
        f"p99 {recovered * 1000:.1f} ms a second after the overload; before it "
        f"{normal * 1000:.1f} ms"
    )


@pytest.fixture(scope="module")
def flight_request(december: pd.DataFrame) -> bytes:
    return post("/predict", {"flights": as_requests(december.head(1))})


def _serve(model_folder: Bundle, home: Path):
    env = os.environ | {
        "MLOPS_SERVE__DEADLINE_MS": str(DEADLINE_MS),
        "MLOPS_SERVE__POLL_INTERVAL_S": "0",
    }
    return mlops_serve(
        "--model-dir", str(model_folder.folder), options=("--home", str(home)), env=env
    )


def test_twice_the_capacity_is_shed_briefly(
    model_folder: Bundle, flight_request: bytes, tmp_path: Path
) -> None:
    with _serve(model_folder, tmp_path) as served:
        result = overload(served, flight_request, seconds=4.0)
    check(result, 4.0)


@pytest.mark.slow
def test_twice_the_capacity_for_30_seconds(
    model_folder: Bundle, flight_request: bytes, tmp_path: Path
) -> None:
    with _serve(model_folder, tmp_path) as served:
        result = overload(served, flight_request, seconds=30.0)
    check(result, 30.0)
