"""Admission: a scoring request that arrives while the batcher refuses work (its queue full, or
the event loop running late) gets a 503 before the app reads its body.

The outermost ASGI layer, so a refusal costs no body parsing, no routing, no validation and
no scoring: one check and a pre-built 503 with Retry-After. uvicorn's parsing and the socket
work still come first, about a ninth of what an answer costs (benchmarks/refusal_cost.py), so the
excess of an overload is cheap but not free. It also stamps each scoring request's arrival
(`ARRIVED`), which the batcher's deadline counts from, and its id (`REQUEST_ID`: the client's
`X-Request-ID` when it is a short token, else a new one), which the answer carries in its
`X-Request-ID` header and the prediction log beside each prediction. Everything else
(liveness, readiness, metrics, admin) passes untouched.

`mlops serve` refuses earlier still: its HTTP protocol (`serving.connection`) asks
`EdgeAdmission` as soon as a request's head is read, and answers a refusal itself, without
the request cycle, the task and the middleware stack uvicorn would build for it; this
middleware refuses what reaches the app anyway (a server run with another protocol, a
pipelined request).
"""

from __future__ import annotations

import itertools
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.batcher import ARRIVED, REQUEST_ID, MicroBatcher
from serving.metrics import ServingMetrics

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
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")  # what a client's X-Request-ID may be
# a new id: this process's random prefix and a counter (unique across workers and replicas;
# uuid4 per request, a getrandom call each, cost 4% of /predict's throughput)
_PREFIX = uuid.uuid4().hex[:16]
_NEXT = itertools.count()


def is_scoring(path: str) -> bool:
    return path in SCORING or (path.startswith("/v2/models/") and path.endswith("/infer"))


class EdgeAdmission:
    """The same decision for the server's protocol, from a request's head: True when this
    request is refused (and counted: shed, and a 503 among the requests, as the middleware's
    refusals are); the protocol then answers `REFUSAL` once the body has arrived."""

    def __init__(self, batcher: MicroBatcher, metrics: ServingMetrics) -> None:
        self.batcher = batcher
        self.metrics = metrics

    def refuses(self, method: bytes, url: bytes) -> bool:
        path = url.partition(b"?")[0].decode("latin-1")  # percent-encoded: the app decides
        if not is_scoring(path) or self.batcher.admits():
            return False
        self.metrics.observe_request("unmatched", method.decode("latin-1"), 503, 0.0)
        return True


def refusal(keep_alive: bool) -> bytes:
    """The refusal as the protocol writes it: the middleware's 503, status line included."""
    head = b"HTTP/1.1 503 Service Unavailable\r\n" + b"".join(
        b"%s: %s\r\n" % header for header in _START["headers"]
    )
    return head + (b"" if keep_alive else b"connection: close\r\n") + b"\r\n" + _REFUSAL


class Admission:
    """503 + Retry-After for scoring requests while the batcher refuses work."""

    def __init__(self, app: ASGIApp, batcher: MicroBatcher) -> None:
        self.app = app
        self.batcher = batcher
        batcher.counted = True  # in flight counted here: every scoring request passes this layer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_scoring(scope["path"]):
            if not self.batcher.admits():
                await send(_START)
                await send(_BODY)
                return
            ARRIVED.set(time.monotonic())
            request_id = _request_id(scope)
            REQUEST_ID.set(request_id)
            header = (b"x-request-id", request_id.encode())

            async def send_with_id(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", ()), header]
                await send(message)

            self.batcher.in_flight += 1
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                self.batcher.in_flight -= 1
            return
        await self.app(scope, receive, send)


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id" and _REQUEST_ID.fullmatch(value):
            return value.decode()
    return f"{_PREFIX}-{next(_NEXT):x}"
