"""Open-loop HTTP load: requests fired on a fixed schedule whatever the server answers.

Closed-loop clients (each waits for its answer before sending again) slow down with the server
and never show an overload: past capacity they just measure it. Here request i is due at
`start + i / rate`; it goes out on an idle keep-alive connection (a new one when all are busy,
as independent users would open them) and its latency counts from when it was due, so a late
client is charged to the server (no coordinated omission). Raw HTTP/1.1 over asyncio
protocols, one request per connection at a time, to keep the client's own cost per request
to a few µs and off the server's measurements. Used by the overload and stop tests and by
`benchmarks/overload.py` and `benchmarks/soak.py`. The hot swap test, which needs the version
each answer names, reads the bodies through httpx instead (`open_loop`, below).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

T = TypeVar("T")


@dataclass(slots=True)
class Outcome:
    due: float  # time.monotonic() when it was scheduled
    sent: float = 0.0  # when it was written (later than due when the client falls behind)
    done: float = 0.0  # when the answer (or the failure) came
    status: int = 0  # 0: no answer (connection closed or refused); -1: no connection free
    retry_after: bool = False  # the answer had a Retry-After header

    @property
    def latency(self) -> float:
        """From when it was due: what a user of an open system waits."""
        return self.done - self.due

    @property
    def server_latency(self) -> float:
        """From when it was written: the server's part, with less of the client's own delay."""
        return self.done - self.sent


def post(path: str, body: object, headers: dict[str, str] | None = None) -> bytes:
    """One HTTP/1.1 request, as bytes, sent as is each time."""
    payload = json.dumps(body).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n{extra}\r\n"
    )
    return head.encode() + payload


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


class _Connection(asyncio.Protocol):
    """A keep-alive connection with at most one request in flight."""

    def __init__(self, on_done: Callable[[_Connection, Outcome], None]) -> None:
        self.on_done = on_done
        self.transport: asyncio.Transport | None = None
        self.outcome: Outcome | None = None
        self.buffer = bytearray()
        self.open = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, request: bytes, outcome: Outcome) -> None:
        self.outcome = outcome
        outcome.sent = time.monotonic()
        self.transport.write(request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        end = buffer.find(b"\r\n\r\n")
        if end < 0 or self.outcome is None:
            return
        # uvicorn writes header names in lower case; a few searches beat parsing them all
        at = buffer.find(b"content-length: ", 0, end)
        length = int(buffer[at + 16 : buffer.find(b"\r\n", at)]) if at >= 0 else 0
        if len(buffer) < end + 4 + length:
            return
        outcome, self.outcome = self.outcome, None
        outcome.done = time.monotonic()
        outcome.status = int(buffer[9:12])
        outcome.retry_after = buffer.find(b"retry-after: ", 0, end) >= 0
        del buffer[: end + 4 + length]
        self.on_done(self, outcome)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if self.outcome is not None:  # closed before the whole answer came
            outcome, self.outcome = self.outcome, None
            outcome.done = time.monotonic()
            self.on_done(self, outcome)


@dataclass
class OpenLoop:
    """Fires `request` at `rate` per second on up to `max_connections` connections."""

    host: str
    port: int
    request: bytes
    max_connections: int = 2048
    outcomes: list[Outcome] = field(default_factory=list)
    _idle: list[_Connection] = field(default_factory=list)
    _opened: int = 0

    def _done(self, connection: _Connection, outcome: Outcome) -> None:
        if connection.open:
            self._idle.append(connection)
        else:
            self._opened -= 1

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        self._opened += 1
        try:
            _, connection = await loop.create_connection(
                lambda: _Connection(self._done), self.host, self.port
            )
        except OSError:
            self._opened -= 1
            raise
        return connection

    async def _send_on_new(self, outcome: Outcome) -> None:
        try:
            connection = await self._connect()
        except OSError:
            outcome.done = time.monotonic()  # status 0: refused
            return
        connection.send(self.request, outcome)

    async def warm(self, connections: int) -> None:
        """Open connections ahead and have each answer a liveness probe, so the run does not
        start with a backlog of handshakes the server has not accepted yet."""
        opened = await asyncio.gather(*(self._connect() for _ in range(connections)))
        loop = asyncio.get_running_loop()
        answered: list[asyncio.Future[None]] = []
        for connection in opened:
            future = loop.create_future()
            connection.on_done = lambda c, o, f=future: f.done() or f.set_result(None)
            connection.send(get("/v2/health/live"), Outcome(time.monotonic()))
            answered.append(future)
        await asyncio.gather(*answered)
        for connection in opened:
            connection.on_done = self._done
        self._idle.extend(opened)

    def fire(self, due: float) -> None:
        outcome = Outcome(due)
        self.outcomes.append(outcome)
        while self._idle:
            connection = self._idle.pop()
            if connection.open:
                connection.send(self.request, outcome)
                return
            self._opened -= 1
        if self._opened < self.max_connections:
            asyncio.get_running_loop().create_task(self._send_on_new(outcome))
        else:
            outcome.status, outcome.done = -1, due

    async def run(self, rate: float, seconds: float) -> list[Outcome]:
        """Fire for `seconds`; return this run's outcomes once every answer is in."""
        first = len(self.outcomes)
        start = time.monotonic()
        sent = 0
        total = int(rate * seconds)
        while sent < total:
            now = time.monotonic()
            while sent < total and start + sent / rate <= now:
                self.fire(start + sent / rate)
                sent += 1
            await asyncio.sleep(min(0.001, max(0.0, start + sent / rate - time.monotonic())))
        mine = self.outcomes[first:]
        while any(o.done == 0.0 for o in mine):  # the last answers
            await asyncio.sleep(0.01)
        return mine

    def close(self) -> None:
        for connection in self._idle:
            if connection.transport is not None:
                connection.transport.close()
        self._idle.clear()


async def closed_loop(
    host: str, port: int, request: bytes, concurrency: int, seconds: float
) -> list[Outcome]:
    """`concurrency` clients, each sending again as soon as it has its answer: the capacity."""
    outcomes: list[Outcome] = []
    end = time.monotonic() + seconds

    async def client() -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] | None = None

        def done(connection: _Connection, outcome: Outcome) -> None:
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

        _, connection = await loop.create_connection(lambda: _Connection(done), host, port)
        while time.monotonic() < end and connection.open:
            waiter = loop.create_future()
            outcome = Outcome(time.monotonic())
            connection.send(request, outcome)
            await waiter
            outcomes.append(outcome)
        connection.transport.close()  # type: ignore[union-attr]

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return outcomes


async def probe(host: str, port: int, path: str, interval_s: float, stop: asyncio.Event) -> list:
    """GET `path` every `interval_s` on its own connection until `stop`: [(status, seconds)]."""
    loop = asyncio.get_running_loop()
    answers: list[tuple[int, float]] = []
    waiter: asyncio.Future[Outcome] | None = None

    def done(connection: _Connection, outcome: Outcome) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(outcome)

    _, connection = await loop.create_connection(lambda: _Connection(done), host, port)
    while not stop.is_set() and connection.open:
        waiter = loop.create_future()
        connection.send(get(path), Outcome(time.monotonic()))
        outcome = await waiter
        answers.append((outcome.status, outcome.latency))
        await asyncio.sleep(interval_s)
    connection.transport.close()  # type: ignore[union-attr]
    return answers


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by rank; nan for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """CPU time (user + system) of a process, every thread, or of one of its threads, from
    /proc."""
    stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on uvloop when it is installed (uvicorn[standard] brings it): the client
    costs less per request, and it shares the machine with the server it measures."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        factory = None
    else:
        factory = uvloop.new_event_loop
    # Hundreds of thousands of outcomes pile up in a run: a full collection over them would
    # stall the client for a few hundred ms and be counted as the server's latency. They make
    # no cycles, so the collector is off while the load runs.
    gc.disable()
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(main)
    finally:
        gc.enable()


async def request_once(host: str, port: int, request: bytes) -> Outcome:
    """One request on a connection of its own; status 0 if it was closed before answering."""
    loop = asyncio.get_running_loop()
    answered: asyncio.Future[Outcome] = loop.create_future()
    outcome = Outcome(time.monotonic())
    _, connection = await loop.create_connection(
        lambda: _Connection(lambda _, o: answered.done() or answered.set_result(o)), host, port
    )
    connection.send(request, outcome)
    await answered
    connection.transport.close()  # type: ignore[union-attr]
    return outcome


# --- which model answered: /predict's bodies read, through httpx --------------------------
# The hot swap test needs the version each answer names; an httpx client in a process of its
# own (the test's threads, moving an alias through MLflow, would delay one in its process).


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
    return percentile([shot.latency for shot in shots], 0.99)


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
