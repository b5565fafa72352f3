"""What the server needs, built at the edge (`mlops serve`, the app factory) from settings.

`mlops.settings.Settings.serve` is this dataclass: `MLOPS_SERVE__MAX_BATCH=64` fills it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator, Field

PositiveInt = Annotated[int, Field(ge=1)]
# an empty MLOPS_SERVE__MODEL_DIR means the registry, as an unset one does
OptionalFolder = Annotated[Path | None, BeforeValidator(lambda v: None if v == "" else v)]


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"  # published beyond this machine only when the user opts in
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    workers: PositiveInt = 1  # uvicorn worker processes
    model_dir: OptionalFolder = None  # a local model folder instead of the registry's champion
    max_batch: PositiveInt = 256  # rows per onnxruntime call when requests are gathered
    max_wait_ms: Annotated[float, Field(ge=0)] = 0.0  # extra wait for company
    # Backpressure (serving/batcher.py). The queue is bounded in rows, not requests: scoring
    # time and memory grow with rows, and a request may carry 1 or 10,000 of them. Past the
    # bound, past the deadline while queued, or while the event loop runs more than
    # max_lag_ms late (in proportion), a scoring request gets a 503 with Retry-After.
    max_queue_rows: PositiveInt = 512  # two full batches waiting: ~0.1 s of one-flight requests
    deadline_ms: Annotated[float, Field(gt=0)] = 500.0  # from arrival to scoring, at most
    max_lag_ms: Annotated[float, Field(gt=0)] = 20.0  # the event loop this late: refuse
    # uvicorn's wait for in-flight requests on SIGTERM: below the container's stop grace
    # period (15 s in docker-compose.yml), which must also cover the lifespan's shutdown
    graceful_shutdown_s: Annotated[float, Field(ge=0)] = 10.0
    max_request_rows: PositiveInt = 10_000  # flights per request
    max_body_bytes: Annotated[int, Field(ge=1024)] = 8 * 1024 * 1024  # larger bodies get 413
    threads: Annotated[int, Field(ge=0)] = 0  # onnxruntime threads a worker; 0: cores / workers
    poll_interval_s: Annotated[float, Field(ge=0)] = 30.0  # 0: reload on /admin/reload only
    admin_token: str = field(default="", repr=False)  # empty: admin endpoints are disabled
    drift_window_rows: Annotated[int, Field(ge=100)] = 10_000

    def __post_init__(self) -> None:
        if self.threads == 0:  # workers x threads = the cores
            object.__setattr__(self, "threads", max(1, (os.cpu_count() or 1) // self.workers))
