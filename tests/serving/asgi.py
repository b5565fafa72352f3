"""Raw ASGI requests: any method, path, header (repeated, malformed) and body a client could
send, without a client library in between to tidy them up (httpx sets Content-Length itself).

The app runs in a TestClient's event loop (its lifespan loads the model there), and requests
are made in that loop through the client's portal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fastapi.testclient import TestClient
from starlette.types import Message


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


def request(
    client: TestClient,
    method: str,
    path: str,
    headers: Sequence[tuple[bytes, bytes]] = (),
    chunks: Sequence[bytes] = (b"",),
) -> Answer:
    """One request to `client.app`, in the client's loop; the body as `chunks` (streamed)."""
    assert client.portal is not None, "inside `with TestClient(app) as client:` only"
    return client.portal.call(_request, client.app, method, path, list(headers), list(chunks))


async def _request(
    app, method: str, path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes]
) -> Answer:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    pending = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return Answer(start["status"], list(start.get("headers", [])), body)
