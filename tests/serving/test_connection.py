"""The request head's bounds (serving.connection) over a real socket: its size (431) and the
time it may take (slowloris), on uvicorn with the protocol `mlops serve` and the image use."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.app import create_app
from serving.bundle import Bundle
from serving.config import CONFIG_STATE_KEY, ServeConfig
from serving.connection import HTTP_PROTOCOL
from serving.manager import FolderSource
from serving.state import ServingState
from tests.processes import metric

# the protocol's refusals, as /metrics counts them: (name, labels)
REFUSED = ("mlops_requests_total", {"endpoint": "unmatched", "method": "POST", "status": "503"})
SHED = ("mlops_shed_requests_total", {"reason": "queue_full"})
LIMITS = ServeConfig(max_header_bytes=2048, header_timeout_s=0.5)
GET = b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n"


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    """Publishes LIMITS as the serving app does; /slow answers after twice the head timeout."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            scope["state"][CONFIG_STATE_KEY] = LIMITS
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/slow":
        await asyncio.sleep(2 * LIMITS.header_timeout_s)
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


@contextmanager
def served(app: ASGIApp, http: str = HTTP_PROTOCOL) -> Iterator[int]:
    """uvicorn in a thread with this protocol; the port it listens on."""
    server = uvicorn.Server(uvicorn.Config(app, port=0, http=http, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with served(_app) as port:
        yield port


def exchange(port: int, *parts: bytes, pause_s: float = 0.0, wait_s: float = 5.0) -> bytes:
    """Send the parts (pausing between them), then read until the server closes or `wait_s`;
    b"OPEN" appended if it had not closed by then."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(wait_s)
        try:
            for part in parts:
                sock.sendall(part)
                time.sleep(pause_s)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed on us while we sent: what it answered is still to be read
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except TimeoutError:
            return answer + b"OPEN"
        except ConnectionResetError:
            pass
        return answer


def _with_header(size: int) -> bytes:
    """A whole GET whose head is `size` bytes."""
    head = GET + b"Connection: close\r\nX-Pad: "
    return head + b"a" * (size - len(head) - 4) + b"\r\n\r\n"


def test_a_head_at_the_limit_is_served_and_one_byte_more_is_a_431(port: int) -> None:
    assert exchange(port, _with_header(2048)).startswith(b"HTTP/1.1 200")
    over = exchange(port, _with_header(2049))
    assert over.startswith(b"HTTP/1.1 431") and over.endswith(b"too large.")


def test_a_large_header_is_refused_before_it_is_all_sent(port: int) -> None:
    started = time.monotonic()
    chunks = [GET + b"X-Pad: "] + [b"a" * 1024] * 4096  # 4 MiB, never finished
    answer = exchange(port, *chunks)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
    assert time.monotonic() - started < 5


def test_a_head_that_trickles_past_the_timeout_is_a_408_and_closed(port: int) -> None:
    started = time.monotonic()
    answer = exchange(port, GET, b"X-A: 1\r\n", b"X-B: 2\r\n", b"X-C: 3\r\n", pause_s=0.2)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert time.monotonic() - started < 2


def test_a_connection_that_sends_nothing_is_closed(port: int) -> None:
    assert exchange(port, wait_s=3) == b""  # closed, not b"OPEN"


def test_the_timeout_neither_cuts_a_slow_response_nor_the_next_request(port: int) -> None:
    slow = b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n"
    last = GET + b"Connection: close\r\n\r\n"
    answer = exchange(port, slow, last, pause_s=2 * LIMITS.header_timeout_s + 0.3)
    assert answer.count(b"HTTP/1.1 200 OK") == 2, answer


def test_stock_httptools_has_neither_bound() -> None:
    """Why the protocol exists: the same requests, answered by uvicorn's own."""
    with served(_app, http="httptools") as port:
        assert exchange(port, _with_header(64 * 1024)).startswith(b"HTTP/1.1 200")
        assert exchange(port, GET, pause_s=0, wait_s=2).endswith(b"OPEN")


def test_the_app_hands_its_configured_limits_to_the_protocol(tmp_path: Path) -> None:
    """create_app publishes its ServeConfig in the lifespan state: no model is needed."""
    config = ServeConfig(poll_interval_s=0, max_header_bytes=1024, header_timeout_s=0.3)
    with served(create_app(config, FolderSource(tmp_path))) as port:
        assert exchange(port, _with_header(1024)).startswith(b"HTTP/1.1 200")
        assert exchange(port, _with_header(1025)).startswith(b"HTTP/1.1 431")
        started = time.monotonic()
        assert exchange(port, GET).startswith(b"HTTP/1.1 408")
        assert time.monotonic() - started < 2


def _metric(port: int, counted: tuple[str, dict[str, str]]) -> float:
    page = exchange(port, b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    name, labels = counted
    return metric(page.partition(b"\r\n\r\n")[2].decode(), name, **labels)


def test_a_refused_request_is_answered_by_the_protocol_and_the_connection_kept(
    model_folder: Bundle,
) -> None:
    """While the batcher refuses work, a scoring request is answered 503 + Retry-After by the
    protocol itself (no request cycle: uvicorn's `server` header, which every response that
    goes through the app carries, is absent), after its body, on a connection that serves the
    next request; counted as shed and as a 503. HTTP/1.0 and `Connection: close` get it with
    the connection closed."""
    config = ServeConfig(poll_interval_s=0, max_queue_rows=64)
    app = create_app(config, FolderSource(model_folder.folder))
    with served(app) as port:
        deadline = time.monotonic() + 60
        while b" 200 " not in exchange(port, GET + b"Connection: close\r\n\r\n"):
            assert time.monotonic() < deadline, "no model loaded"
            time.sleep(0.1)
        state: ServingState = app.state.serving
        shed, refused = _metric(port, SHED), _metric(port, REFUSED)
        state.batcher.queued_rows = config.max_queue_rows  # as if 64 flights were waiting
        try:
            head = b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: 9\r\n\r\n"
            # the body arrives after the head, and is not even JSON: never parsed
            answer = exchange(port, head, b"{not json", GET + b"\r\n", pause_s=0.2, wait_s=2)
            refusal, _, rest = answer.partition(b"\r\n\r\n")
            assert refusal.startswith(b"HTTP/1.1 503 "), answer
            assert b"retry-after: 1" in refusal and b"server: uvicorn" not in refusal
            assert rest.startswith(b'{"detail":"overloaded: retry shortly"}HTTP/1.1 200 OK')
            assert rest.endswith(b"OPEN")  # kept alive after both
            for closing in (b"POST /invocations HTTP/1.0\r\n", b"POST /predict HTTP/1.1\r\n"):
                close = closing + b"Host: t\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"
                answer = exchange(port, close, wait_s=2)
                assert answer.startswith(b"HTTP/1.1 503 ") and b"connection: close" in answer
                assert not answer.endswith(b"OPEN")
        finally:
            state.batcher.queued_rows = 0
        assert _metric(port, SHED) == shed + 3
        assert _metric(port, REFUSED) == refused + 3
