"""The app's ASGI middlewares: the body size limit and the request metrics.

Plain ASGI, not `BaseHTTPMiddleware`: they sit on every request, /predict's included, and a
pure ASGI layer costs a function call where `BaseHTTPMiddleware` costs a task and a stream.
"""

from __future__ import annotations

import time

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.excerpts import cut
from serving.metrics import ServingMetrics


class BodyLimit:
    """413 for bodies over the limit, by Content-Length or while streaming; 400 for a
    Content-Length that is not a number of bytes; 415 for a compressed body (Content-Encoding
    other than identity), which the app would otherwise parse as if it were plain."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_digits = len(str(max_bytes))  # more digits: over the limit, without int()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        encoding = next((v for k, v in scope["headers"] if k == b"content-encoding"), None)
        if encoding is not None and encoding.strip().lower() not in (b"", b"identity"):
            detail = (
                f"content-encoding: {cut(encoding.decode('latin-1'))} is not supported; "
                "send the body uncompressed"
            )
            await JSONResponse({"detail": detail}, 415)(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None:
            size = declared.lstrip(b"0") or b"0"
            if not declared.isdigit():  # bytes.isdigit: ASCII digits only
                detail, status = "content-length: not a number of bytes", 400
            elif len(size) > self.max_digits or int(size) > self.max_bytes:
                detail = f"body: {cut(size.decode())} bytes; the limit is {self.max_bytes}"
                status = 413
            else:  # HTTP/1.1 framing: the server reads no more than the declared length
                await self.app(scope, receive, send)
                return
            await JSONResponse({"detail": detail}, status)(scope, receive, send)
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
