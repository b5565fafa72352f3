"""Micro-batching: concurrent requests share one transform and one onnxruntime call.

Each request puts its flights on a queue and awaits a future. One task takes the first
waiting request, gathers what else is queued (up to `max_batch` rows, waiting at most
`max_wait` seconds for more), scores them all in one call and hands each request its slice.
Under load the queue fills while the previous batch is scored, and before scoring the task
yields to the loop until no more requests arrive (the ones already read off the sockets), so
batches form without a timer; small batches are scored on the loop's thread, large ones on
one worker thread.
The model is read once per batch from the slot, so a hot swap changes models between
batches, never within one, and every answer names its model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from serving.runtime import LoadedModel, Scored

logger = logging.getLogger(__name__)


class NotReadyError(Exception):
    """No model is loaded yet, or the server is shutting down."""


class ScoringError(Exception):
    """These flights could not be scored (the batch they were in was scored without them)."""


@dataclass(frozen=True)
class Answer:
    probabilities: np.ndarray
    delayed: np.ndarray
    defaults_used: list[tuple[str, ...]]
    model: LoadedModel


@dataclass
class _Pending:
    rows: list[dict]
    future: asyncio.Future[Answer] = field(repr=False)


class ModelSlot:
    """The served model: requests read `current` without a lock; a swap replaces it whole."""

    def __init__(self) -> None:
        self.current: LoadedModel | None = None

    def swap(self, model: LoadedModel) -> None:
        self.current = model


# Batches up to this many rows are scored on the event loop's thread (about 3 ms at most):
# handing them to a thread costs more in GIL hand-offs than it saves.
INLINE_ROWS = 256

OnBatch = Callable[[Scored, float], None]  # the scored batch and its seconds, off the loop


class MicroBatcher:
    def __init__(
        self, slot: ModelSlot, max_batch: int, max_wait_s: float, on_batch: OnBatch | None = None
    ) -> None:
        self.slot = slot
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="score")
        self._task: asyncio.Task | None = None
        self._closed = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        """Refuse new work, finish what is queued, then stop."""
        self._closed = True
        if self._task is not None:
            self._queue.put_nowait(None)
            await self._task
        self._executor.shutdown(wait=True)

    async def score(self, rows: list[dict]) -> Answer:
        if self._closed:
            raise NotReadyError("the server is shutting down")
        if self.slot.current is None:
            raise NotReadyError("no model is loaded yet")
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(rows, future))
        return await future

    async def _settle(self, first: _Pending) -> None:
        """Yield to the loop while the queue still grows: the requests it has already read
        (their handlers are ready to run) join this batch instead of waiting for the next.
        Costs nothing measurable when idle (one loop turn) and makes batches about twice as
        large under load (benchmarks/RESULTS.md)."""
        room = self.max_batch - len(first.rows)  # requests of one row each, at most
        size = -1
        while size != self._queue.qsize() < room:
            size = self._queue.qsize()
            await asyncio.sleep(0)

    async def _gather(self, first: _Pending) -> tuple[list[_Pending], bool]:
        batch, rows = [first], len(first.rows)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while rows < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if item is None:
                return batch, True
            batch.append(item)
            rows += len(item.rows)
        return batch, False

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            await self._settle(first)
            batch, stopping = await self._gather(first)
            await self._score(batch)
        while not self._queue.empty():  # anything that raced in before the flag was seen
            item = self._queue.get_nowait()
            if item is not None:
                await self._score([item])

    async def _score(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        model = self.slot.current
        if model is None:
            for item in batch:
                item.future.set_exception(NotReadyError("no model is loaded"))
            return
        rows = sum(len(item.rows) for item in batch)
        try:
            if rows <= INLINE_ROWS:  # a millisecond or two: cheaper than a thread hop
                scored = self._score_rows(model, batch)
            else:  # large batches on the worker thread, so the loop keeps answering
                scored = await loop.run_in_executor(self._executor, self._score_rows, model, batch)
        except Exception:
            if len(batch) == 1:
                logger.exception("scoring failed")
                _fail(batch[0], ScoringError("these flights could not be scored"))
                return
            for item in batch:  # one bad request must not fail its neighbours
                await self._score([item])
            return
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
                    )
                )
            start = end

    def _score_rows(self, model: LoadedModel, batch: list[_Pending]) -> Scored:
        started = time.perf_counter()
        scored = model.score_rows([row for item in batch for row in item.rows])
        if self.on_batch:
            self.on_batch(scored, time.perf_counter() - started)
        return scored


def _fail(item: _Pending, error: Exception) -> None:
    if not item.future.done():
        item.future.set_exception(error)
