"""What the server needs, built at the edge (`mlops serve`, the app factory) from settings.

`mlops.settings.Settings.serve` is this dataclass: `MLOPS_SERVE__MAX_BATCH=64` fills it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator, Field

# The app's lifespan state holds its config under this key: uvicorn hands that state to each
# connection's protocol, where serving.connection reads the limits on the request head.
CONFIG_STATE_KEY = "serving.config"
EDGE_STATE_KEY = "serving.admission"  # and the admission's check (serving.admission.EdgeAdmission)
PositiveInt = Annotated[int, Field(ge=1)]
# an empty MLOPS_SERVE__MODEL_DIR means the registry, as an unset one does
OptionalFolder = Annotated[Path | None, BeforeValidator(lambda v: None if v == "" else v)]


@dataclass(frozen=True)
class MaxAges:
    """Minutes: a source whose newest event is older than this at a prediction's as-of time
    is stale (`MLOPS_EVENTS__MAX_AGE_MIN__WEATHER=30`). Departures and arrivals come
    every few minutes at a New York airport, weather hourly, schedules a day ahead."""

    departures: Annotated[float, Field(gt=0)] = 60.0
    arrivals: Annotated[float, Field(gt=0)] = 120.0
    schedules: Annotated[float, Field(gt=0)] = 24 * 60.0
    weather: Annotated[float, Field(gt=0)] = 120.0


@dataclass(frozen=True)
class EventsConfig:
    """The online store's events (`serving.live`): `MLOPS_EVENTS__TOKEN=...` fills it."""

    # the bearer token of POST /v1/events (events change what every client is answered);
    # empty: the endpoint is disabled
    token: str = field(default="", repr=False)
    # where the online store takes over from the model's lookups (New York local time);
    # default: the feature build's last observed moment. Earlier replays months of its data
    # through the events (the store starts from what the build knew by then).
    since: datetime | None = None
    max_age_min: MaxAges = field(default_factory=lambda: MaxAges())
    # redis://host:6379/0: accepted events go to a Redis stream that every worker (of every
    # replica) reads whole, from its start at each start; empty: one worker, and a local log
    stream_url: str = field(default="", repr=False)
    stream_key: str = "mlops:events"
    # the local log and the quarantine; the app factory sets MLOPS_HOME/events
    folder: Path | None = None


@dataclass(frozen=True)
class PredictionLogConfig:
    """The prediction log (`serving.prediction_log`): `MLOPS_PREDICTIONS__ENABLED=false` turns
    it off."""

    enabled: bool = True
    # written this often: a kill -9 loses at most the predictions of the last flush_s
    flush_s: Annotated[float, Field(gt=0)] = 1.0
    # waiting to be written, at most: past it (the disk behind) predictions are not logged
    max_buffered_rows: PositiveInt = 200_000
    folder: Path | None = None  # default: $MLOPS_HOME/data/predictions; None in the app: off
    # the arrivals the online store applied (the labels): default $MLOPS_HOME/data/outcomes
    outcomes: Path | None = None
    # realized quality (serving.quality), over these windows of event time ('[24, 168]')
    quality_windows_h: tuple[Annotated[float, Field(gt=0)], ...] = (24.0, 168.0)
    # flights predicted and not landed yet, at most (the oldest asked are dropped past it)
    max_waiting_flights: PositiveInt = 200_000


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"  # published beyond this machine only when the user opts in
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    workers: PositiveInt = 1  # uvicorn worker processes
    model_dir: OptionalFolder = None  # a local model folder instead of the registry's champion
    max_batch: PositiveInt = 256  # rows per onnxruntime call when requests are gathered
    max_wait_ms: Annotated[float, Field(ge=0)] = 0.0  # extra wait for company
    # the most a batch waits for the requests it expects (those being read, and as many as
    # were in flight lately): it ends when they are queued; 0 scores what is queued at once
    settle_ms: Annotated[float, Field(ge=0)] = 1.0
    # Backpressure (serving/batcher.py). The queue is bounded in rows, not requests: scoring
    # time and memory grow with rows, and a request may carry 1 or 10,000 of them. Past the
    # bound, past the deadline while queued, or while the event loop runs more than
    # max_lag_ms late (in proportion), a scoring request gets a 503 with Retry-After.
    # two of the largest requests: bulk clients are not refused for their size (512 refused 98%
    # of 1,000-flight requests at concurrency 4); the deadline bounds the wait of small ones
    max_queue_rows: PositiveInt = 20_000
    deadline_ms: Annotated[float, Field(gt=0)] = 500.0  # from arrival to scoring, at most
    max_lag_ms: Annotated[float, Field(gt=0)] = 20.0  # the event loop this late: refuse
    # uvicorn's wait for in-flight requests on SIGTERM: below the container's stop grace
    # period (15 s in docker-compose.yml), which must also cover the lifespan's shutdown
    graceful_shutdown_s: Annotated[float, Field(ge=0)] = 10.0
    # Before that, on SIGTERM: this long with readiness answering 503 and everything else served,
    # so that a load balancer checking readiness (the stack's edge checks every second) takes
    # this server out before it closes its kept-alive connections under requests on their way
    drain_s: Annotated[float, Field(ge=0)] = 0.0
    max_request_rows: PositiveInt = 10_000  # flights per request
    max_body_bytes: Annotated[int, Field(ge=1024)] = 8 * 1024 * 1024  # larger bodies get 413
    # The request line and headers (serving.connection): larger heads get 431, and a head not
    # complete this long after the connection opened (or the last response) is closed
    # (slowloris). 16 KiB is h11's default; this API's clients send well under 1 KiB.
    max_header_bytes: Annotated[int, Field(ge=1024)] = 16 * 1024
    header_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    threads: Annotated[int, Field(ge=0)] = 0  # onnxruntime threads a worker; 0: cores / workers
    poll_interval_s: Annotated[float, Field(ge=0)] = 30.0  # 0: reload on /admin/reload only
    admin_token: str = field(default="", repr=False)  # empty: admin endpoints are disabled
    drift_window_rows: Annotated[int, Field(ge=100)] = 10_000
    # each MLflow call of the server: seconds without an answer, and retries (MLflow's own
    # defaults, 120 s and 7 retries with backoff, held a restart for minutes in an outage);
    # the server retries a failed load itself, with backoff, until it works
    mlflow_timeout_s: PositiveInt = 10
    mlflow_retries: Annotated[int, Field(ge=0)] = 1

    def mlflow_environment(self) -> dict[str, str]:
        """MLflow reads its HTTP limits from the environment on each call: the server's."""
        return {
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(self.mlflow_timeout_s),
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(self.mlflow_retries),
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            "MLFLOW_DOWNLOAD_CHUNK_TIMEOUT": str(self.mlflow_timeout_s),
        }

    def __post_init__(self) -> None:
        if self.threads == 0:  # workers x threads = the cores
            object.__setattr__(self, "threads", max(1, (os.cpu_count() or 1) // self.workers))
