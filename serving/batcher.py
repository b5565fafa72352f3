"""Micro-batching: concurrent requests share one transform and one onnxruntime call.

Each request puts its flights on a queue and awaits a future. One task takes the first
waiting request, gathers what else is queued (up to `max_batch` rows, waiting at most
`max_wait` seconds for more), scores them all in one call and hands each request its slice.
Under load the queue fills while the previous batch is scored, and before scoring the task
waits, at most `settle` seconds, for the company it can expect: requests being read (admitted,
not queued yet), and as many as were in flight lately. Clients that were just answered on
kept-alive connections come back within microseconds; scoring without them splits them
into two alternating half batches, each paying a batch's fixed cost (scoring 1 row takes
0.42 ms, 13 rows 0.67 ms). The wait ends as soon as they are queued. Small batches are scored on
the loop's thread, large ones on one worker thread.
The model is read once per batch from the slot, so a hot swap changes models between
batches, never within one, and every answer names its model.

Backpressure: the queue is bounded in rows (what scoring time and memory grow with; a bound in
requests would admit 10,000-flight requests as freely as one-flight ones). A request that
finds `max_queue_rows` or more waiting is refused at once, and one that waited in the queue
past its deadline is refused when the batcher takes it instead of being scored late. Most of
a request's cost is HTTP and parsing, though, not scoring: past capacity the backlog builds in
the sockets, before the queue, and shows as an event loop running late; while it runs more
than `max_lag_s` late, arrivals are refused in proportion. So an overload costs the server a
cheap refusal per excess request (`serving.admission` decides before the body is read), never
a growing backlog. The deadline counts from the request's arrival (`ARRIVED`) when known.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field

import numpy as np

from serving.config import ServeConfig
from serving.runtime import LoadedModel, Scored
from serving.slot import ModelSlot

logger = logging.getLogger(__name__)


class NotReadyError(Exception):
    """No model is loaded yet, or the server is shutting down."""


class ScoringError(Exception):
    """These flights could not be scored (the batch they were in was scored without them)."""


class OverloadedError(Exception):
    """The queue is full, or this request waited past its deadline: retry shortly."""


# When the current request arrived (time.monotonic()), set per request by the admission
# middleware: a context variable is the request's own (one task each), costs ~50 ns, and
# reaches the batcher through the routes without changing their signatures.
ARRIVED: ContextVar[float] = ContextVar("arrived")
# The request's id (its X-Request-ID), set by the same middleware: the prediction log's key.
REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="")


@dataclass(frozen=True)
class Answer:
    probabilities: np.ndarray
    delayed: np.ndarray
    defaults_used: list[tuple[str, ...]]
    model: LoadedModel
    as_of: list[str]  # ISO minutes, New York local: formatted once per batch, not per answer
    stale: list[tuple[str, ...]]


@dataclass
class _Pending:
    rows: list[dict]
    future: asyncio.Future[Answer] = field(repr=False)
    arrived: float  # time.monotonic()
    request_id: str = ""


# How often the loop's lag is sampled: 200 timers a second cost about 0.9% of a core (an idle
# server used 13 ms of CPU a second, 5 ms with a tick every 50 ms; 2-core machine, stop 28).
LAG_TICK_S = 0.005

# How far back "lately" goes for the company a batch expects: the most scoring requests in
# flight at once over these many lag ticks (100 ms), so that the expectation follows a load
# that drops within a tenth of a second.
PEAK_TICKS = 20

# Batches up to this many rows are scored on the event loop's thread (about 3 ms at most):
# handing them to a thread costs more in GIL hand-offs than it saves.
INLINE_ROWS = 256

OnBatch = Callable[[Scored, float], None]  # the scored batch and its seconds, off the loop
OnShed = Callable[[str], None]  # why a request was refused: queue_full, loop_lag, deadline
# each scored batch: its requests' ids and sizes, its rows, the scores, the model (the
# prediction log: on the loop, so it must only keep references)
OnScored = Callable[[list[str], list[int], Scored, LoadedModel], None]


class MicroBatcher:
    def __init__(
        self,
        slot: ModelSlot,
        max_batch: int,
        max_wait_s: float,
        on_batch: OnBatch | None = None,
        *,
        max_queue_rows: int = ServeConfig.max_queue_rows,
        deadline_s: float = ServeConfig.deadline_ms / 1000,
        max_lag_s: float = ServeConfig.max_lag_ms / 1000,
        on_shed: OnShed | None = None,
        on_wait: Callable[[float], None] | None = None,
        on_scored: OnScored | None = None,
        settle_s: float = ServeConfig.settle_ms / 1000,
    ) -> None:
        self.slot = slot
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self.max_queue_rows = max_queue_rows
        self.deadline_s = deadline_s
        self.max_lag_s = max_lag_s
        self.on_shed = on_shed
        self.on_wait = on_wait  # seconds the oldest request of each batch waited in the queue
        self.on_scored = on_scored
        self.settle_s = settle_s
        self.queued_rows = 0  # rows waiting in the queue, not those being scored
        # Scoring requests admitted and not yet answered, counted by the admission middleware
        # when `counted` (not when the batcher is used alone): with no other in flight, a
        # batch does not wait a turn of the loop for company that cannot come.
        self.in_flight = 0
        self.counted = False
        # the most in flight at once during the current lag tick, and during each of the last
        # PEAK_TICKS (the company a batch expects)
        self._peak = 0
        self._peaks: deque[int] = deque(maxlen=PEAK_TICKS)
        self._company = 0  # the requests the batch being formed expects queued, or
        self._room = 0  # this many rows queued: a full batch
        self._settled: asyncio.Future[None] | None = None  # resolved when they are
        self._doubted_until = 0.0  # time.monotonic(): until then, no company from `lately`
        self.lag = 0.0  # how late the loop ran its last lag tick, in seconds
        self._credit = 0.0  # admissions earned while the loop is late
        self._late = 0.0  # how late the last tick ran
        self._ticker: asyncio.TimerHandle | None = None
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="score")
        self._task: asyncio.Task | None = None
        self._closed = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="micro-batcher")
        self._tick(loop, loop.time())

    async def stop(self) -> None:
        """Refuse new work, finish what is queued, then stop."""
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
        if self._task is not None:
            self._queue.put_nowait(None)
            await self._task
        self._executor.shutdown(wait=True)

    @property
    def queued_requests(self) -> int:
        return self._queue.qsize()

    def refusal(self) -> str | None:
        """Why a request arriving now is refused, or None; the admission middleware asks
        before the body is read."""
        if self.queued_rows >= self.max_queue_rows:
            return "queue_full"
        if self.lag > self.max_lag_s and (self.in_flight or not self.counted):
            # Parsing, not scoring, is most of a request's cost: past capacity the backlog
            # is the requests the loop has not read yet, waiting in the sockets where the
            # queue cannot see them, and the sign of it is a loop running late. With none in
            # flight it is late from something else (a model loading, a collection), which
            # refusing would not help. Admit the share max_lag / lag of them, not none:
            # refusing costs a fifth of serving, so a loop late from refusals alone would
            # otherwise refuse everything for good.
            self._credit += self.max_lag_s / self.lag
            if self._credit < 1.0:
                return "loop_lag"
            self._credit -= 1.0
        return None

    def _tick(self, loop: asyncio.AbstractEventLoop, due: float, cpu: float = 0.0) -> None:
        """Note how late this timer ran (a loop turn runs every ready request's step before
        it), and set the next one. Lateness is scaled by the share of the time since the last
        tick that the loop's thread was running: a process that waited for a core (a busy
        machine, a CPU quota) while it had little to do is not behind on its requests, and
        refusing them would not help it."""
        now, cpu_now = loop.time(), time.thread_time()
        since = now - (due - LAG_TICK_S)
        busy = min(1.0, (cpu_now - cpu) / since) if since > 0 else 1.0
        late = max(0.0, now - due) * busy
        # Late twice in a row: one long turn (a collection, a reload's stall) leaves a few
        # requests behind, read in the next turn, and is no reason to refuse any.
        self.lag, self._late = min(late, self._late), late
        self._peaks.append(self._peak)
        self._peak = self.in_flight
        self._ticker = loop.call_at(now + LAG_TICK_S, self._tick, loop, now + LAG_TICK_S, cpu_now)

    async def score(self, rows: list[dict]) -> Answer:
        if self._closed:
            raise NotReadyError("the server is shutting down")
        if self.slot.current is None:
            raise NotReadyError("no model is loaded yet")
        # Checked again now that the rows are known (others may have queued since this one
        # arrived); not the lag, which this request's parsing has already paid for. One
        # request may overshoot the bound, so a large one still fits behind small ones.
        if self.queued_rows >= self.max_queue_rows:
            self.shed("queue_full")
            raise OverloadedError(f"overloaded: {self.queued_rows} flights queued, retry shortly")
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        arrived = ARRIVED.get(None) or time.monotonic()
        self._queue.put_nowait(_Pending(rows, future, arrived, REQUEST_ID.get()))
        self.queued_rows += len(rows)
        self._peak = max(self._peak, self.in_flight)
        if self._settled is not None and self._has_company():
            _resolve(self._settled)
        return await future

    def admits(self) -> bool:
        """`refusal` for a request at the door: False, and the refusal counted, if refused."""
        refused = self.refusal()
        if refused is None:
            return True
        self.shed(refused)
        return False

    def shed(self, reason: str) -> None:
        if self.on_shed is not None:
            self.on_shed(reason)

    def _take(self, item: _Pending, now: float) -> bool:
        """Off the queue: False, and the request answered, if it is not worth scoring any
        more (past its deadline, or its client is gone and its future cancelled)."""
        self.queued_rows -= len(item.rows)
        if item.future.done():
            return False
        if now - item.arrived > self.deadline_s:
            self.shed("deadline")
            item.future.set_exception(
                OverloadedError(f"overloaded: queued past the deadline of {self.deadline_s} s")
            )
            return False
        return True

    async def _settle(self, first: _Pending) -> None:
        """Wait, `settle_s` at most (a millisecond more on uvloop's clock: `_resolve_at`), for
        the requests this batch can expect: those admitted and not queued yet (being read,
        their handlers about to run), and as many as were in flight at once lately (clients
        just answered, on their way back). Closed-loop clients at concurrency 32 then share one
        batch instead of alternating halves: 1.2x the requests/s (benchmarks/RESULTS.md). A
        request alone in flight, with none lately, waits for nothing (micro-batching is no
        slower than none at concurrency 1). When most of those expected lately do not come
        (clients that left; requests arriving at random, each client pausing between them),
        the wait ends at `settle_s` and the batcher stops expecting them for a tenth of a
        second, so such traffic pays `settle_s` on at most one batch in that time. In flight
        is counted by the admission layer: the batcher alone expects nothing."""
        if self.settle_s <= 0:
            return
        loop = asyncio.get_running_loop()
        lately = max(self._peak, max(self._peaks, default=0))
        if time.monotonic() < self._doubted_until:
            lately = 0
        self._room = self.max_batch - len(first.rows)
        self._company = max(self.in_flight, lately) - 1  # besides `first`
        if self._has_company():
            return  # none expected: not even a turn of the loop
        # One turn first: the previous batch's requests finish (their answers written), so
        # that those still in flight are the ones being read, and what was read is queued.
        await asyncio.sleep(0)
        self._company = max(self.in_flight, lately) - 1
        if self._has_company():
            return
        queued = self._queue.qsize()
        self._settled = settled = loop.create_future()
        _resolve_at(loop, time.monotonic() + self.settle_s, settled)
        try:
            await settled
        finally:
            _resolve(settled)  # its timer, if still set, then finds it done and stops
            self._settled = None
        if self._queue.qsize() - queued < (self._company - queued) / 2:
            # Most of those expected did not come: they are not clients on their way back
            # (requests arriving at random, with pauses between a client's requests), and
            # waiting for them only delays this one. Expect only those being read for a while.
            self._doubted_until = time.monotonic() + PEAK_TICKS * LAG_TICK_S

    def _has_company(self) -> bool:
        """The batch being formed has the requests it expects queued, or a full batch's rows."""
        return self._queue.qsize() >= self._company or self.queued_rows >= self._room

    async def _gather(self, first: _Pending) -> tuple[list[_Pending], bool]:
        batch, rows = [first], len(first.rows)
        deadline = time.monotonic() + self.max_wait_s
        while rows < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), _timer_s(remaining))
                except TimeoutError:
                    continue  # early on uvloop's clock (`_resolve_at`): the deadline decides
            if item is None:
                return batch, True
            if self._take(item, time.monotonic()):
                batch.append(item)
                rows += len(item.rows)
        return batch, False

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            now = time.monotonic()
            if not self._take(first, now):
                continue
            if self.on_wait is not None:
                self.on_wait(now - first.arrived)
            await self._settle(first)
            batch, stopping = await self._gather(first)
            await self._score(batch)
        while not self._queue.empty():  # anything that raced in before the flag was seen
            item = self._queue.get_nowait()
            if item is not None and self._take(item, time.monotonic()):
                await self._score([item])

    async def _score(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        model = self.slot.current
        if model is None:
            for item in batch:
                item.future.set_exception(NotReadyError("no model is loaded"))
            return
        rows = batch[0].rows if len(batch) == 1 else [r for item in batch for r in item.rows]
        try:
            if len(rows) <= INLINE_ROWS:  # a millisecond or two: cheaper than a thread hop
                scored = self._score_rows(model, rows)
            else:  # large batches on the worker thread, so the loop keeps answering
                scored = await loop.run_in_executor(self._executor, self._score_rows, model, rows)
        except Exception:
            if len(batch) == 1:
                logger.exception("scoring failed")
                _fail(batch[0], ScoringError("these flights could not be scored"))
                return
            for item in batch:  # one bad request must not fail its neighbours
                await self._score([item])
            return
        if self.on_scored is not None:
            self._log(batch, scored, model)
        as_of = minutes_text(scored.as_of)
        start = 0
        for item in batch:
            end = start + len(item.rows)
            if not item.future.done():  # the client may have gone
                item.future.set_result(
                    Answer(
                        scored.probabilities[start:end],
                        scored.delayed[start:end],
                        scored.defaults_used[start:end],
                        model,
                        as_of[start:end],
                        scored.stale[start:end],
                    )
                )
            start = end

    def _log(self, batch: list[_Pending], scored: Scored, model: LoadedModel) -> None:
        assert self.on_scored is not None
        try:
            ids, sizes = [item.request_id for item in batch], [len(item.rows) for item in batch]
            self.on_scored(ids, sizes, scored, model)
        except Exception:  # the log never fails an answer
            logger.exception("the prediction log could not take a batch")

    def _score_rows(self, model: LoadedModel, rows: list[dict]) -> Scored:
        started = time.perf_counter()
        scored = model.score_rows(rows)
        if self.on_batch:
            self.on_batch(scored, time.perf_counter() - started)
        return scored


def minutes_text(minutes: np.ndarray) -> list[str]:
    """Minutes since the epoch (float64) as ISO minutes: '2013-12-01T05:15'."""
    return np.datetime_as_string(minutes.astype("int64").astype("datetime64[m]")).tolist()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _resolve_at(loop: asyncio.AbstractEventLoop, when: float, future: asyncio.Future[None]) -> None:
    """Resolve `future` at `when` (time.monotonic()), not before, and at most a millisecond
    after. uvloop (uvicorn's loop when installed) keeps its clock in whole milliseconds,
    truncated: on a loop woken often by other work, a 1 ms timer fired anywhere from 0 to 1 ms
    after it was set, and behind the edge the wait for company ended, half the time, before
    the clients just answered could come back through it (RESULTS: 15 rows a batch at 32
    clients, against 23-26 with the wait whole). So the timer is rearmed for what is left."""
    if future.done():
        return
    left = when - time.monotonic()
    if left <= 0:
        future.set_result(None)
        return
    loop.call_later(_timer_s(left), _resolve_at, loop, when, future)


def _timer_s(seconds: float) -> float:
    """`seconds` rounded up to the loops' timer grain, a millisecond: uvloop rounds a timer to
    the nearest, and one of 0 would spin the loop until the deadline."""
    return math.ceil(seconds * 1000) / 1000


def _fail(item: _Pending, error: Exception) -> None:
    if not item.future.done():
        item.future.set_exception(error)
