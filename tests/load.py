"""Open-loop load: requests fired on a fixed schedule whatever the server answers, so a slow
server meets a growing queue as it would in production (closed-loop clients slow down with it
and hide the stall), and latency is counted from when each request was due."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np


@dataclass(frozen=True)
class Shot:
    due: float  # seconds from the start of the load
    latency: float  # seconds from `due` to the answer (or the transport error)
    status: int | None  # None: a transport-level error, a failure like any 5xx
    version: str | None  # the model that answered a /predict
    error: str = ""


async def open_loop(
    base: str, path: str, body: dict, rate: float, seconds: float, timeout: float = 30
) -> list[Shot]:
    """POST `body` to `path` `rate` times a second for `seconds`."""
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits) as client:
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def shoot(due: float) -> Shot:
            try:
                response = await client.post(path, json=body)
            except httpx.TransportError as error:
                return Shot(due, loop.time() - start - due, None, None, repr(error))
            version = None
            if response.status_code == 200:
                version = response.json().get("model", {}).get("version")
            return Shot(due, loop.time() - start - due, response.status_code, version)

        shots = []
        for i in range(int(rate * seconds)):
            due = i / rate
            await asyncio.sleep(max(0.0, start + due - loop.time()))
            shots.append(asyncio.create_task(shoot(due)))
        return list(await asyncio.gather(*shots))


def p99(shots: list[Shot]) -> float:
    return float(np.percentile([shot.latency for shot in shots], 99))


def open_loop_process(
    base: str, path: str, body: dict, rate: float, seconds: float
) -> subprocess.Popen:
    """The same load from a process of its own, as a real client is: the test's own threads
    (an MLflow client moving an alias) do not delay it. `collect` reads its shots."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.load", base, path, json.dumps(body), str(rate), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[1],
    )


def collect(process: subprocess.Popen, timeout: float = 600) -> list[Shot]:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out
    return [Shot(**shot) for shot in json.loads(out)]


if __name__ == "__main__":
    base, path, body, rate, seconds = sys.argv[1:]
    shots = asyncio.run(open_loop(base, path, json.loads(body), float(rate), float(seconds)))
    sys.stdout.write(json.dumps([asdict(shot) for shot in shots]))
