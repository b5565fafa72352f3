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
from collections.abc import AsyncIterator
from dataclasses import dataclass

from serving.batcher import MicroBatcher, ModelSlot, NotReadyError
from serving.config import ServeConfig
from serving.manager import ModelManager, Source
from serving.metrics import ServingMetrics
from serving.runtime import LoadedModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingState:
    config: ServeConfig
    slot: ModelSlot
    batcher: MicroBatcher
    manager: ModelManager
    metrics: ServingMetrics

    @classmethod
    def build(cls, config: ServeConfig, source: Source) -> ServingState:
        slot = ModelSlot()
        metrics = ServingMetrics()
        manager = ModelManager(source, slot, metrics, config.threads, config.drift_window_rows)
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
        )
        metrics.queued_rows.set_function(lambda: batcher.queued_rows)  # read when scraped
        metrics.queued_requests.set_function(lambda: batcher.queued_requests)
        return cls(config, slot, batcher, manager, metrics)

    def model(self) -> LoadedModel:
        """The served model; NotReadyError (a 503) until the first one is loaded."""
        model = self.slot.current
        if model is None:
            raise NotReadyError("no model is loaded yet")
        return model

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The app's lifespan. A failed first load is not fatal: the server starts live but
        not ready, and the poller (or /admin/reload) loads the model when it appears."""
        self.batcher.start()
        result = await self.manager.reload()
        if result.outcome != "loaded":
            logger.warning("started without a model (%s): %s", result.outcome, result.detail)
        poller = None
        if self.config.poll_interval_s > 0:
            poller = asyncio.create_task(self.manager.poll(self.config.poll_interval_s))
        try:
            yield
        finally:
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            await self.batcher.stop()  # uvicorn has drained the connections; finish queued work
