"""Benchmark: the server's CPU time per /predict, in process, for A/B checks of the HTTP layer.

The app is driven through ASGI directly (no sockets, no uvicorn), `--concurrency` requests in
flight so that micro-batches form as under load, one flight per request; the figure is this
process's CPU time per request. It leaves out the load generator and the socket work, which
both sides share, so a change in the app shows more clearly than in requests/s; other load
on a shared machine still moves it, so alternate the checkouts and compare the minimums
(benchmarks/RESULTS.md). Run this file with PYTHONPATH at each checkout in turn:

    PYTHONPATH=. python benchmarks/predict_cpu.py --model-dir MODEL
    PYTHONPATH=../other python benchmarks/predict_cpu.py --model-dir MODEL

MODEL: a model folder, e.g. the one `benchmarks/serving.py` downloads into its home,
`<home>/serving/models/flight-delay/<version>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    # benchmarks/serving.py would shadow the `serving` package; PYTHONPATH picks the checkout
    del sys.path[0]

from serving.app import create_app
from serving.config import ServeConfig
from serving.manager import FolderSource
from serving.schemas import EXAMPLE_FLIGHT

Message = dict[str, Any]
FLIGHT = EXAMPLE_FLIGHT


async def _started(app: Callable[..., Awaitable[None]]) -> tuple[asyncio.Queue, asyncio.Queue]:
    """Run the app's lifespan up to startup complete (the model loaded and warm)."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    asyncio.get_running_loop().create_task(app(scope, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"the app did not start: {started}")
    return inbox, outbox


async def measure(model_dir: Path, requests: int, repeats: int, concurrency: int) -> dict:
    app = create_app(ServeConfig(poll_interval_s=0), FolderSource(model_dir))
    inbox, outbox = await _started(app)
    while app.state.serving.slot.current is None:  # the model loads after the app has started
        await asyncio.sleep(0.05)
    body = json.dumps({"flights": [FLIGHT]}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    statuses: list[int] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def user(count: int) -> None:
        for _ in range(count):
            await app(dict(scope), receive, send)

    await asyncio.gather(*(user(50) for _ in range(concurrency)))  # warm every path
    cpu, wall = [], []
    for _ in range(repeats):
        statuses.clear()
        cpu_started, wall_started = time.process_time(), time.perf_counter()
        await asyncio.gather(*(user(requests // concurrency) for _ in range(concurrency)))
        cpu.append((time.process_time() - cpu_started) / len(statuses) * 1e6)
        wall.append((time.perf_counter() - wall_started) / len(statuses) * 1e6)
        if set(statuses) != {200}:
            raise RuntimeError(f"statuses other than 200: {sorted(set(statuses))}")
    await inbox.put({"type": "lifespan.shutdown"})
    await outbox.get()
    return {
        "cpu_us_per_request_min": round(min(cpu), 1),
        "cpu_us_per_request_median": round(statistics.median(cpu), 1),
        "wall_us_per_request_median": round(statistics.median(wall), 1),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="a model folder")
    parser.add_argument("--requests", type=int, default=6400, help="per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    figures = asyncio.run(measure(args.model_dir, args.requests, args.repeats, args.concurrency))
    sys.stdout.write(json.dumps(figures) + "\n")
