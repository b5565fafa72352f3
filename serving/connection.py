"""uvicorn's httptools protocol, with bounds on the request head: its size and its time.

uvicorn's httptools protocol has neither (its h11 protocol, slower on /predict, bounds the size
only): a 64 MiB header was read whole, 4.75 s of the event loop, and connections that trickle
a header without ever finishing it stayed open past the keep-alive timeout (slowloris).
`mlops serve` and the serving image run uvicorn with `http=HTTP_PROTOCOL`.

- Size: more than `ServeConfig.max_header_bytes` of a request head (request line and headers)
  is a 431 and the connection is closed. Bytes are counted as they arrive, before httptools
  sees them: it never buffers more than the limit.
- Time: a head not complete `header_timeout_s` after the connection opened, or after the last
  response on it, is a 408 (a silent close if nothing was sent) and the connection is closed.

- Admission: a scoring request the batcher refuses (`serving.admission.EdgeAdmission`) is
  answered 503 with Retry-After here, once its body has been read and dropped, without the
  request cycle, the task and the middleware stack uvicorn would build for it: under an
  overload, refusing is most of the work, and this makes a refusal cost a parse and a write.
  Not for a request pipelined behind a response in flight, nor one that expects
  100-continue: those reach the app, whose middleware refuses them the same way.

The limits and the admission come from the app's lifespan state (`CONFIG_STATE_KEY`,
`EDGE_STATE_KEY`), which uvicorn hands to each connection's protocol once the lifespan has
started: read once, at the edge, whether uvicorn was started by `mlops serve` or by its own
command line.
"""

from __future__ import annotations

import asyncio
from asyncio import TimerHandle
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from serving.admission import EdgeAdmission, refusal
from serving.config import CONFIG_STATE_KEY, EDGE_STATE_KEY, ServeConfig

HTTP_PROTOCOL = "serving.connection:BoundedHttpToolsProtocol"  # uvicorn's `http` (`--http`)
_DEFAULTS = ServeConfig()  # for an app that does not publish its config
_REFUSAL = {True: refusal(keep_alive=True), False: refusal(keep_alive=False)}


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = app_state.get(CONFIG_STATE_KEY, _DEFAULTS)
        self.max_head_bytes: int = limits.max_header_bytes
        self.head_timeout_s: float = limits.header_timeout_s
        self.reading_head = True  # the next bytes belong to a request head
        self.head_bytes = 0
        self.head_timer: TimerHandle | None = None
        self.edge: EdgeAdmission | None = app_state.get(EDGE_STATE_KEY)
        self.refusing: bool | None = None  # while a refused request's body arrives: keep-alive

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.reading_head:
            self.head_bytes += len(data)
            if self.head_bytes > self.max_head_bytes and not self._head_ends_within_limit(data):
                self._refuse(431, "Request header fields too large.")
                return  # httptools never sees the bytes over the limit
        super().data_received(data)

    def _head_ends_within_limit(self, data: bytes) -> bool:
        """Whether the head ends in `data` within the limit (a read may carry the end of a
        head and a body: only the head counts). Looked for only on the read that crosses."""
        end = data.find(b"\r\n\r\n")
        return end != -1 and self.head_bytes - len(data) + end + 4 <= self.max_head_bytes

    def on_headers_complete(self) -> None:
        self.reading_head = False
        self._cancel_head_timer()
        if self._refused():
            return  # no request cycle: the body is dropped, then the refusal written
        super().on_headers_complete()

    def _refused(self) -> bool:
        if self.edge is None or self.expect_100_continue or self.pipeline:
            return False
        if self.cycle is not None and not self.cycle.response_complete:
            return False  # pipelined behind a response in flight: answered in order, by the app
        if self.parser.should_upgrade():
            return False
        if not self.edge.refuses(self.parser.get_method(), self.url):
            return False
        version = self.parser.get_http_version()
        self.refusing = version != "1.0" and self.parser.should_keep_alive()
        return True

    def on_body(self, body: bytes) -> None:
        if self.refusing is None:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self.refusing is not None:
            keep_alive, self.refusing = self.refusing, None
            self.reading_head = True
            self.head_bytes = 0
            self.transport.write(_REFUSAL[keep_alive])
            if keep_alive:
                self.on_response_complete()  # the keep-alive timer, and the head timer
            else:
                self.transport.close()
            return
        super().on_message_complete()
        self.reading_head = True  # what follows is the next request's head
        self.head_bytes = 0

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._waiting_for_a_request():  # not when a pipelined request was started instead
            self._start_head_timer()

    def _waiting_for_a_request(self) -> bool:
        idle = self.cycle is None or self.cycle.response_complete
        return idle and self.reading_head and not self.transport.is_closing()

    def _start_head_timer(self) -> None:
        self._cancel_head_timer()
        self.head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if not self._waiting_for_a_request():
            return
        if self.head_bytes:
            self._refuse(408, "Request header not received in time.")
        else:  # an idle connection: closed as uvicorn's keep-alive timeout closes it
            self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """A short plain-text answer, unless a response is being written (pipelining), then
        the connection is closed."""
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            body = message.encode()
            self.transport.write(
                STATUS_LINE[status]
                + b"content-type: text/plain; charset=utf-8\r\n"
                + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
                + body
            )
        # debug, not warning: a client that opens 1,000 connections would write 1,000 lines
        self.logger.debug("%s %d: %s", self.client, status, message)
        self.transport.close()
