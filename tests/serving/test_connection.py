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
from serving.config import CONFIG_STATE_KEY, ServeConfig
from serving.connection import HTTP_PROTOCOL
from serving.manager import FolderSource

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
