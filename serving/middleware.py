"""The app's ASGI middlewares: the body size limit and the request metrics.

Plain ASGI, not `BaseHTTPMiddleware`: they sit on every request, /predict's included, and a
pure ASGI layer costs a function call where `BaseHTTPMiddleware` costs a task and a stream.
"""

from __future__ import annotations

import time

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.metrics import ServingMetrics


class BodyLimit:
    """413 for bodies over the limit, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit():
            if int(declared) > self.max_bytes:
                response = JSONResponse(
                    {"detail": f"body: {int(declared)} bytes; the limit is {self.max_bytes}"}, 413
                )
                await response(scope, receive, send)
            else:  # HTTP/1.1 framing: the server reads no more than the declared length
                await self.app(scope, receive, send)
            return
        received = 0  # chunked: count while streaming

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, f"body: over the limit of {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


class RequestMetrics:
    """Requests and latency by endpoint (the route's template) and status."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers if the app raises before it starts a response

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe_request(
                endpoint, scope["method"], status, time.perf_counter() - started
            )
