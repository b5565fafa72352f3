"""The micro-batcher on its own, over the real model: batches form under concurrency, each
request gets its own slice in order, a batch is scored by one model, a request that cannot
be scored fails alone, and past its bounds (queued rows, deadline, loop lag) it refuses work
instead of queueing it, and counts why."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import numpy as np
import pandas as pd
import pytest
import uvloop

from serving.batcher import (
    ARRIVED,
    Answer,
    MicroBatcher,
    NotReadyError,
    OverloadedError,
    ScoringError,
    _Pending,
)
from serving.bundle import Bundle
from serving.metrics import ServingMetrics
from serving.protocols import validate_flights
from serving.runtime import LoadedModel, Scored
from serving.slot import ModelSlot

from .conftest import as_requests

T = TypeVar("T")


@pytest.fixture(scope="module")
def model(model_folder: Bundle) -> LoadedModel:
    return LoadedModel.load(model_folder)


@pytest.fixture(scope="module")
def rows(december: pd.DataFrame) -> list[dict]:
    """Validated request rows, as the routes hand them to the batcher."""
    return validate_flights(as_requests(december.head(40)), "flights", 1_000)


def _slot(model: LoadedModel | None) -> ModelSlot:
    slot = ModelSlot()
    if model is not None:
        slot.swap(model)
    return slot


def _run(
    slot: ModelSlot,
    work: Callable[[MicroBatcher], Awaitable[T]],
    max_batch: int = 256,
    on_batch: Callable[[Scored, float], None] | None = None,
    **bounds: float | Callable[[str], None],
) -> T:
    """`work` against a started batcher, on a fresh event loop; the batcher is stopped after."""

    async def main() -> T:
        batcher = MicroBatcher(slot, max_batch, 0.0, on_batch, **bounds)  # type: ignore[arg-type]
        batcher.start()
        try:
            return await work(batcher)
        finally:
            await batcher.stop()

    return asyncio.run(main())


def test_concurrent_requests_share_batches_up_to_the_limit(
    model: LoadedModel, rows: list[dict]
) -> None:
    batches: list[int] = []

    async def work(batcher: MicroBatcher) -> list[Answer]:
        return await asyncio.gather(*(batcher.score([row]) for row in rows[:30]))

    answers = _run(
        _slot(model), work, max_batch=8, on_batch=lambda s, _: batches.append(len(s.probabilities))
    )
    assert len(answers) == 30
    assert sum(batches) == 30
    assert len(batches) < 30, "concurrent requests should be scored together"
    assert max(batches) <= 8


def test_each_request_gets_its_own_rows_in_order(model: LoadedModel, rows: list[dict]) -> None:
    sizes = [3, 1, 5, 2, 4, 1]
    requests, start = [], 0
    for size in sizes:
        requests.append(rows[start : start + size])
        start += size

    async def work(batcher: MicroBatcher) -> list[Answer]:
        return await asyncio.gather(*(batcher.score(request) for request in requests))

    batches: list[int] = []
    answers = _run(_slot(model), work, on_batch=lambda s, _: batches.append(len(s.probabilities)))
    assert len(batches) < len(requests)  # the slices came out of shared batches
    for request, answer in zip(requests, answers, strict=True):
        alone = model.score_rows(request)
        assert len(answer.probabilities) == len(request)
        np.testing.assert_allclose(answer.probabilities, alone.probabilities, atol=1e-6)
        assert list(answer.delayed) == list(alone.delayed)
        assert answer.defaults_used == alone.defaults_used
        assert answer.model is model


class FlippingSlot(ModelSlot):
    """A slot whose model changes on every read: as if a hot swap landed between any two
    lines of the batcher. A batch that reads the slot more than once would mix models."""

    def __init__(self, models: tuple[LoadedModel, LoadedModel]) -> None:
        super().__init__()
        self.models = models
        self.reads = 0

    @property
    def current(self) -> LoadedModel:
        self.reads += 1
        return self.models[self.reads % 2]

    @current.setter
    def current(self, model: LoadedModel | None) -> None:
        pass  # ModelSlot.__init__ sets it; the two models above are all this slot serves


def test_a_batch_is_scored_and_answered_by_one_model(
    model: LoadedModel, model_folder: Bundle, rows: list[dict]
) -> None:
    other = LoadedModel.load(model_folder)  # the same version, loaded again: another object
    scored_by: list[tuple[int, LoadedModel]] = []

    async def work(batcher: MicroBatcher) -> list[Answer]:
        return await asyncio.gather(*(batcher.score([row]) for row in rows[:24]))

    answers = _run(
        FlippingSlot((model, other)),
        work,
        max_batch=6,
        on_batch=lambda s, _: scored_by.append((len(s.probabilities), s.model)),
    )
    assert len(scored_by) > 1
    position = 0
    for size, scorer in scored_by:  # batches take the queue in order
        in_batch = answers[position : position + size]
        assert all(answer.model is scorer for answer in in_batch)
        position += size
    assert position == len(answers)


def test_no_model_or_shutting_down_is_not_ready(model: LoadedModel, rows: list[dict]) -> None:
    async def score_one(batcher: MicroBatcher) -> Answer:
        return await batcher.score(rows[:1])

    with pytest.raises(NotReadyError, match="no model"):
        _run(_slot(None), score_one)

    async def after_stop(batcher: MicroBatcher) -> Answer:
        await batcher.stop()
        return await asyncio.wait_for(batcher.score(rows[:1]), 10)  # not queued forever

    with pytest.raises(NotReadyError, match="shutting down"):
        _run(_slot(model), after_stop)


def test_a_request_that_cannot_be_scored_fails_alone(model: LoadedModel, rows: list[dict]) -> None:
    # Routes validate rows first; this one slips past (a time that is not a time) and makes
    # the whole batch's transform fail: the batcher retries each request on its own.
    broken = rows[0] | {"scheduled_departure": "not a time"}
    requests = [rows[0:2], [broken], rows[2:5]]

    async def work(batcher: MicroBatcher) -> list[Answer | BaseException]:
        return await asyncio.gather(
            *(batcher.score(request) for request in requests), return_exceptions=True
        )

    first, failed, last = _run(_slot(model), work)
    assert isinstance(failed, ScoringError)
    assert isinstance(first, Answer) and isinstance(last, Answer)
    np.testing.assert_allclose(
        last.probabilities, model.score_rows(rows[2:5]).probabilities, atol=1e-6
    )


def test_stopping_answers_what_is_already_queued(model: LoadedModel, rows: list[dict]) -> None:
    async def work(batcher: MicroBatcher) -> list[Answer]:
        pending = [asyncio.ensure_future(batcher.score([row])) for row in rows[:10]]
        await asyncio.sleep(0)  # queued, not yet scored
        await batcher.stop()
        return await asyncio.wait_for(asyncio.gather(*pending), 10)

    answers = _run(_slot(model), work)
    assert [len(answer.probabilities) for answer in answers] == [1] * 10


def _shed(metrics: ServingMetrics, reason: str) -> float:
    return metrics.registry.get_sample_value("mlops_shed_requests_total", {"reason": reason})


def test_a_full_queue_refuses_at_once_and_counts_it(model: LoadedModel, rows: list[dict]) -> None:
    metrics = ServingMetrics()
    scored: list[int] = []

    async def work(batcher: MicroBatcher) -> list[Answer | BaseException]:
        # all 12 queue in one loop turn, before the batcher's task runs: 5 rows fit (the
        # third request overshoots the bound of 4 rows, so a large one still fits), the rest
        # are refused without waiting
        requests = [rows[i : i + 2] for i in range(0, 24, 2)]
        return await asyncio.gather(
            *(batcher.score(request) for request in requests), return_exceptions=True
        )

    results = _run(
        _slot(model),
        work,
        on_batch=lambda s, _: scored.append(len(s.probabilities)),
        max_queue_rows=4,
        on_shed=metrics.observe_shed,
    )
    assert [isinstance(r, Answer) for r in results] == [True] * 2 + [False] * 10
    assert all(isinstance(r, OverloadedError) for r in results[2:])
    assert sum(scored) == 4
    assert _shed(metrics, "queue_full") == 10
    assert _shed(metrics, "deadline") == 0


def test_requests_past_their_deadline_are_refused_not_scored(
    model: LoadedModel, rows: list[dict]
) -> None:
    metrics = ServingMetrics()
    scored: list[int] = []

    async def late(batcher: MicroBatcher, request: list[dict], waited_s: float) -> Answer:
        ARRIVED.set(time.monotonic() - waited_s)  # as the admission middleware stamps it
        return await batcher.score(request)

    async def work(batcher: MicroBatcher) -> list[Answer | BaseException]:
        waits = [0.0, 1.0, 0.0, 2.0, 1.0, 0.0]
        return await asyncio.gather(
            *(late(batcher, rows[i : i + 3], wait) for i, wait in enumerate(waits)),
            return_exceptions=True,
        )

    results = _run(
        _slot(model),
        work,
        on_batch=lambda s, _: scored.append(len(s.probabilities)),
        deadline_s=0.5,
        on_shed=metrics.observe_shed,
    )
    kinds = [type(r).__name__ for r in results]
    assert kinds == ["Answer", "OverloadedError"] * 1 + ["Answer"] + ["OverloadedError"] * 2 + [
        "Answer"
    ]
    assert "deadline" in str(results[1])
    assert sum(scored) == 9, "only the three fresh requests were scored"
    assert _shed(metrics, "deadline") == 3


def test_cancelled_requests_are_not_scored(model: LoadedModel, rows: list[dict]) -> None:
    scored: list[int] = []

    async def work(batcher: MicroBatcher) -> Answer:
        gone = asyncio.ensure_future(batcher.score(rows[:5]))
        await asyncio.sleep(0)  # queued
        gone.cancel()  # its client went away
        return await batcher.score(rows[5:6])

    answer = _run(_slot(model), work, on_batch=lambda s, _: scored.append(len(s.probabilities)))
    assert len(answer.probabilities) == 1
    assert scored == [1]


def _hog(seconds: float) -> None:
    """Keep the loop's thread busy, as a turn with a backlog of requests to parse does."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def _turns(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


LATE = [None, None, "loop_lag", None, None]


@pytest.mark.parametrize(
    ("in_flight", "refused"),
    [(None, LATE), (3, LATE), (0, [None] * 5)],  # none in flight: late from something else
)
def test_a_loop_running_late_refuses_new_work(
    model: LoadedModel, in_flight: int | None, refused: list[str | None]
) -> None:
    async def late_turns(count: int) -> None:
        for _ in range(count):
            _hog(0.08)
            await _turns(2)  # the lag tick runs, late, after this task's step

    async def work(batcher: MicroBatcher) -> list[str | None]:
        batcher.counted, batcher.in_flight = in_flight is not None, in_flight or 0
        seen = [batcher.refusal()]
        await late_turns(1)  # one long turn (a collection, a reload) is not a backlog
        seen.append(batcher.refusal())
        await asyncio.sleep(0.03)  # a few ticks on time
        await late_turns(2)  # turn after long turn: the loop is behind on its requests
        seen.append(batcher.refusal())
        await asyncio.sleep(0.03)
        seen.append(batcher.refusal())
        # late without working: the process waited for a core (here: slept), which is not
        # a backlog of requests, and refusing them would not help
        for _ in range(2):
            time.sleep(0.08)
            await _turns(2)
        seen.append(batcher.refusal())
        return seen

    assert _run(_slot(model), work, max_lag_s=0.02) == refused


@pytest.mark.parametrize(
    ("in_flight", "lately", "comes", "waits"),
    [
        (None, 0, False, False),  # the batcher alone: nothing counted, nothing expected
        (1, 0, False, False),  # alone in flight, and lately: no wait for company
        (2, 0, True, False),  # one more being read: waits for it, not for the timer
        (1, 3, True, True),  # three in flight lately: waits for the two still missing
        (1, 3, False, True),  # who do not come: the timer ends the wait
    ],
)
def test_a_batch_waits_for_the_company_it_expects_and_no_longer(
    model: LoadedModel,
    rows: list[dict],
    in_flight: int | None,
    lately: int,
    comes: bool,
    waits: bool,
) -> None:
    """Before scoring, a batch waits for the requests being read (in flight, not queued yet)
    and for as many as were in flight lately (closed-loop clients just answered), until they
    are queued or `settle_s` has passed."""
    settle_s = 0.2

    async def scenario() -> tuple[float, int]:
        batcher = MicroBatcher(_slot(model), 256, 0.0, settle_s=settle_s)
        batcher.counted, batcher.in_flight = in_flight is not None, in_flight or 0
        batcher._peaks.append(lately)
        loop = asyncio.get_running_loop()
        pending = _Pending(rows[:1], loop.create_future(), 0.0, "")
        arrivals = [batcher.score([row]) for row in rows[1 : max(lately, in_flight or 0)]]
        if comes:  # each in a later turn, as reads off the sockets are
            for delay, arrival in enumerate(arrivals):
                loop.call_later(0.01 * (delay + 1), loop.create_task, arrival)
        started = time.perf_counter()
        await batcher._settle(pending)
        waited = time.perf_counter() - started
        for arrival in arrivals if not comes else []:
            arrival.close()
        return waited, batcher.queued_requests

    waited, queued = asyncio.run(scenario())
    if not waits and not comes:
        assert waited < settle_s / 10
    elif comes:  # the wait ends with the last one queued, long before the timer
        assert queued == max(lately, in_flight or 0) - 1
        assert waited < settle_s / 2
    else:
        assert queued == 0
        assert settle_s <= waited < settle_s * 2


def test_company_that_did_not_come_is_not_awaited_again_for_a_while(
    model: LoadedModel, rows: list[dict]
) -> None:
    """Requests arriving at random (each client pausing between its requests) make a peak of
    several in flight without any of them coming back at once: one batch waits `settle_s`
    for them in vain, and the batches after it do not wait."""
    settle_s = 0.05

    async def scenario() -> list[float]:
        batcher = MicroBatcher(_slot(model), 256, 0.0, settle_s=settle_s)
        batcher.counted, batcher.in_flight = True, 1
        batcher._peaks.append(3)
        waits = []
        for _ in range(3):
            pending = _Pending(rows[:1], asyncio.get_running_loop().create_future(), 0.0, "")
            started = time.perf_counter()
            await batcher._settle(pending)
            waits.append(time.perf_counter() - started)
        return waits

    first, *later = asyncio.run(scenario())
    assert first >= settle_s
    assert max(later) < settle_s / 10


LOOPS = [asyncio.new_event_loop, uvloop.new_event_loop]  # asyncio's, and uvicorn's


def _waits_on_a_busy_loop(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
    batcher: Callable[[], MicroBatcher],
    wait: Callable[[MicroBatcher, _Pending], Awaitable[object]],
    rows: list[dict],
) -> list[float]:
    """How long `wait` took, 40 times, on a loop that another task wakes at every turn (as
    sockets do), each time at another phase of the loop's millisecond."""

    async def scenario() -> list[float]:
        waiting, busy = batcher(), True

        async def other_work() -> None:
            while busy:
                await asyncio.sleep(0)

        spinning = asyncio.create_task(other_work())
        waits = []
        for turn in range(40):
            pending = _Pending(rows[:1], asyncio.get_running_loop().create_future(), 0.0, "")
            started = time.perf_counter()
            await wait(waiting, pending)
            waits.append(time.perf_counter() - started)
            await asyncio.sleep(0.00037 * (turn % 7))  # the next wait at another phase
        busy = False
        await spinning
        return waits

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(scenario())


@pytest.mark.parametrize("loop_factory", LOOPS, ids=["asyncio", "uvloop"])
def test_the_wait_lasts_its_time_on_a_busy_loop(
    model: LoadedModel, rows: list[dict], loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    """The wait for company that does not come lasts `settle_s` of the clock, at most a
    millisecond more. uvloop, uvicorn's loop, keeps its clock in whole milliseconds: on a
    loop with other work, which wakes it often, a plain 1 ms `call_later` fired anywhere from
    0 to 1 ms after it was set. A server behind the edge then stopped waiting, half the time,
    before the clients it had just answered could come back through it."""
    settle_s = 0.001

    def expecting() -> MicroBatcher:
        batcher = MicroBatcher(_slot(model), 256, 0.0, settle_s=settle_s)
        batcher.counted, batcher.in_flight = True, 1
        batcher._peaks.append(3)  # company expected, that does not come
        return batcher

    async def settle(batcher: MicroBatcher, pending: _Pending) -> None:
        batcher._doubted_until = 0.0  # expected each time, not after the first in vain
        await batcher._settle(pending)

    waits = _waits_on_a_busy_loop(loop_factory, expecting, settle, rows)
    assert min(waits) >= settle_s, sorted(waits)[:5]
    assert np.median(waits) < settle_s + 0.005, np.median(waits)  # a millisecond more, and noise


@pytest.mark.parametrize("loop_factory", LOOPS, ids=["asyncio", "uvloop"])
def test_a_fixed_wait_lasts_its_time_on_a_busy_loop(
    model: LoadedModel, rows: list[dict], loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    """`MLOPS_SERVE__MAX_WAIT_MS`, a fixed wait for more requests, lasts its time on uvloop's
    whole-millisecond clock as the wait for company does."""
    max_wait_s = 0.001
    waits = _waits_on_a_busy_loop(
        loop_factory,
        lambda: MicroBatcher(_slot(model), 256, max_wait_s, settle_s=0.0),
        MicroBatcher._gather,
        rows,
    )
    assert min(waits) >= max_wait_s, sorted(waits)[:5]
    assert np.median(waits) < max_wait_s + 0.005, np.median(waits)


@pytest.mark.parametrize("settle_s", [0.05, 0.0])
def test_closed_loop_clients_share_one_batch(
    model: LoadedModel, rows: list[dict], settle_s: float
) -> None:
    """Sixteen clients, each sending again a few loop turns after its answer (its response
    written, its next request read), as kept-alive connections do. Waiting for the company
    the batcher expects puts them in one batch each time; scoring what is queued at once
    (`settle_s` 0) splits them into smaller batches, each paying the transform's fixed cost."""
    batches: list[int] = []
    clients = 16

    async def client(batcher: MicroBatcher, index: int) -> None:
        for _ in range(20):
            batcher.in_flight += 1  # as the admission layer counts them
            try:
                await batcher.score(rows[index : index + 1])
            finally:
                batcher.in_flight -= 1
            await _turns(1 + index % 4)  # answered, then back: staggered over turns

    async def work(batcher: MicroBatcher) -> None:
        batcher.counted = True
        await asyncio.gather(*(client(batcher, i) for i in range(clients)))

    _run(
        _slot(model),
        work,
        on_batch=lambda scored, _: batches.append(len(scored.probabilities)),
        settle_s=settle_s,
    )
    typical = float(np.median(batches[1:]))  # the first has not seen them all in flight yet
    if settle_s:
        assert typical == clients, batches
    else:
        assert typical < clients / 2, batches
