"""Admission: a scoring request that arrives while the batcher refuses work (its queue full, or
the event loop running late) gets a 503 before the app reads its body.

The outermost ASGI layer, so a refusal costs no body parsing, no routing, no validation and
no scoring: one check and a pre-built 503 with Retry-After. uvicorn's parsing and the socket
work still come first, about a fifth of what an answer costs (benchmarks/RESULTS.md), so the
excess of an overload is cheap but not free. It also stamps each scoring request's arrival
(`ARRIVED`), which the batcher's deadline counts from. Everything else (liveness, readiness,
metrics, admin) passes untouched.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Receive, Scope, Send

from serving.batcher import ARRIVED, MicroBatcher

SCORING = frozenset({"/predict", "/invocations"})  # and /v2/models/{name}/infer
RETRY_AFTER_S = 1  # the queue drains in well under a second

_REFUSAL = b'{"detail":"overloaded: retry shortly"}'
_START = {
    "type": "http.response.start",
    "status": 503,
    "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(_REFUSAL)).encode()),
        (b"retry-after", str(RETRY_AFTER_S).encode()),
    ],
}
_BODY = {"type": "http.response.body", "body": _REFUSAL}


def is_scoring(path: str) -> bool:
    return path in SCORING or (path.startswith("/v2/models/") and path.endswith("/infer"))


class Admission:
    """503 + Retry-After for scoring requests while the batcher refuses work."""

    def __init__(self, app: ASGIApp, batcher: MicroBatcher) -> None:
        self.app = app
        self.batcher = batcher

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_scoring(scope["path"]):
            refused = self.batcher.refusal()
            if refused is not None:
                self.batcher.shed(refused)
                await send(_START)
                await send(_BODY)
                return
            ARRIVED.set(time.monotonic())
        await self.app(scope, receive, send)
