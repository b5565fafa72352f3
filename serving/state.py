"""What every route of one app shares: the model slot, the micro-batcher over it, the manager
that fills it, the metrics, and the configuration they were built from.

One `ServingState` per app, built by the factory and stored once on `app.state`; routes reach
it through `serving.routes.deps`. It also owns the app's lifetime: start the batcher, load the
first model, poll the source, and on the way out finish what is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.events import minutes_iso
from serving.batcher import Answer, MicroBatcher, NotReadyError
from serving.config import EventsConfig, PredictionLogConfig, ServeConfig
from serving.live import LiveFeatures
from serving.manager import ModelManager, Source
from serving.metrics import ServingMetrics
from serving.prediction_log import PredictionLog
from serving.quality import RealizedQuality
from serving.runtime import LoadedModel
from serving.schemas import EventsInfo
from serving.slot import ModelSlot
from serving.stream import EventStream

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingState:
    config: ServeConfig
    slot: ModelSlot
    batcher: MicroBatcher
    manager: ModelManager
    metrics: ServingMetrics
    events: EventsConfig
    live: LiveFeatures | None  # the online store: events enabled, one worker or a stream
    stream: EventStream | None  # the events' Redis stream, when one is configured
    log: PredictionLog | None  # every prediction served, to the offline store
    quality: RealizedQuality | None  # the log joined with the arrivals (events on, log on)
    # set by SIGTERM's first phase (`ServeConfig.drain_s`): readiness says no, the rest is served
    stopping: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def build(
        cls,
        config: ServeConfig,
        source: Source,
        events: EventsConfig,
        predictions: PredictionLogConfig,
    ) -> ServingState:
        slot = ModelSlot()
        live = None
        if events.token and (config.workers == 1 or events.stream_url):
            live = LiveFeatures(events)
        metrics = ServingMetrics(drift=lambda: None if slot.current is None else slot.current.drift)
        manager = ModelManager(
            source,
            slot,
            metrics,
            config.threads,
            config.drift_window_rows,
            config.poll_interval_s,
            live,
        )
        quality = None
        if predictions.enabled and predictions.folder is not None and live is not None:
            quality = RealizedQuality(
                predictions.quality_windows_h, predictions.max_waiting_flights
            )
            metrics.watch_quality(quality)  # the log joined with the arrivals, their labels
        stream = None
        if live is not None and events.stream_url:
            stream = EventStream(events.stream_url, events.stream_key, live, quality)
        log = None
        if predictions.enabled and predictions.folder is not None:
            # with a stream, every worker joins every worker's tables (serving.stream)
            share = None if quality is None else (stream.share if stream else quality.predictions)
            log = PredictionLog(predictions, metrics.observe_logged, on_table=share)
            if quality is not None:  # made only with the online store
                assert live is not None
                live.on_landed += [quality.landed, log.record_outcomes]
        batcher = MicroBatcher(
            slot,
            config.max_batch,
            config.max_wait_ms / 1000,
            metrics.observe_batch,
            max_queue_rows=config.max_queue_rows,
            deadline_s=config.deadline_ms / 1000,
            max_lag_s=config.max_lag_ms / 1000,
            on_shed=metrics.observe_shed,
            on_wait=metrics.queue_wait.observe,
            on_scored=None if log is None else log.record,
            settle_s=config.settle_ms / 1000,
        )
        metrics.queued_rows.set_function(lambda: batcher.queued_rows)  # read when scraped
        if live is not None:
            metrics.events_applied_at.set_function(lambda: live.applied_at)
        metrics.queued_requests.set_function(lambda: batcher.queued_requests)
        return cls(config, slot, batcher, manager, metrics, events, live, stream, log, quality)

    def model(self) -> LoadedModel:
        """The served model; NotReadyError (a 503) until the first one is loaded and, with an
        event stream, the entries it held at the start are applied."""
        model = self.slot.current
        if model is None:
            raise NotReadyError("no model is loaded yet")
        if self.stream is not None and not self.stream.caught_up:
            raise NotReadyError(self.stream.progress())
        return model

    def events_info(self) -> EventsInfo | None:
        """Where this worker's store stands (GET /model), or None with events off."""
        if self.live is None or self.live.store is None:
            return None
        store, stream = self.live.store, self.stream
        return EventsInfo(
            clock=None if not np.isfinite(store.clock) else minutes_iso(store.clock),
            flights=len(store),
            stream=None if stream is None else stream.describe(),
            position=None if stream is None or stream.last_id == "0" else stream.last_id,
            caught_up=stream is None or stream.caught_up,
            problem=None if stream is None else stream.problem,
        )

    @contextlib.contextmanager
    def _draining_on_sigterm(self) -> Iterator[None]:
        """With `drain_s`, SIGTERM first marks this server stopping (readiness 503) and hands
        the signal to the server's own handler (uvicorn's graceful stop) `drain_s` later; a
        second SIGTERM stops at once. uvicorn installs its handler before the lifespan starts,
        in each worker process; off the main thread (an app run in a test's thread) signals
        cannot be handled, and nothing changes."""
        stop = signal.getsignal(signal.SIGTERM)
        seconds = self.config.drain_s
        in_main = threading.current_thread() is threading.main_thread()
        if seconds <= 0 or not callable(stop) or not in_main:
            yield
            return
        loop = asyncio.get_running_loop()

        def drain(signum: int, frame: Any) -> None:
            self.stopping.set()
            logger.info("SIGTERM: not ready from now, stopping in %.1f s", seconds)
            loop.call_later(seconds, stop, signum, frame)

        def on_sigterm(signum: int, frame: Any) -> None:
            if self.stopping.is_set():
                stop(signum, frame)
            else:  # the handler interrupts the loop's own code: run on the loop instead
                loop.call_soon_threadsafe(drain, signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, stop)

    async def score(self, rows: list[dict[str, Any]]) -> Answer:
        """Score through the batcher, once ready (a 503 before, as `model` says)."""
        self.model()
        return await self.batcher.score(rows)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The app's lifespan. Nothing here waits on the model source: the poller loads the
        first model once the server is up, so it is live at once (before MLflow answers, if
        it ever does) and ready when a model loads."""
        self.batcher.start()
        if self.log is not None:
            self.log.start()
        tasks = [asyncio.create_task(self.manager.poll(), name="model-poller")]
        if self.stream is not None:
            tasks.append(asyncio.create_task(self.stream.follow(), name="event-stream"))
        try:
            with self._draining_on_sigterm():
                yield
        finally:
            for task in tasks:
                task.cancel()  # a load in flight is left to its daemon thread
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self.stream is not None:
                await self.stream.close()
            await self.batcher.stop()  # uvicorn has drained the connections; finish queued work
            if self.log is not None:
                await asyncio.to_thread(self.log.close)  # everything answered is written
