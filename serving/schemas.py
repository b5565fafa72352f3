"""The request and response bodies, shared by /predict, /invocations and the V2 protocol."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from pipelines.contract import new_york_local

Code = Annotated[str, Field(min_length=1, max_length=8, pattern=r"^[A-Za-z0-9]+$")]
# A real December flight: the documentation's example, and the tests' and benchmarks' request.
EXAMPLE_FLIGHT = {
    "carrier": "UA",
    "flight": 1545,
    "tailnum": "N14228",
    "origin": "EWR",
    "dest": "IAH",
    "scheduled_departure": "2013-12-01T05:15:00",
    "distance": 1400.0,
}
EXAMPLE_EVENT = {
    "id": "ua1545-2014-01-02-sched",
    "kind": "scheduled",
    "observed": "2014-01-01T05:15:00",
    "carrier": "UA",
    "flight": 1545,
    "tailnum": "N14228",
    "origin": "EWR",
    "dest": "IAH",
    "scheduled_departure": "2014-01-02T05:15:00",
    "scheduled_arrival": "2014-01-02T08:30:00",
    "distance": 1400.0,
}


class Flight(BaseModel):
    """A scheduled flight, as known before it leaves; other fields are ignored."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"examples": [EXAMPLE_FLIGHT]},
    )

    carrier: Code = Field(description="IATA carrier code; unknown codes use the OOV bucket")
    flight: int = Field(ge=1, le=99_999, description="flight number")
    tailnum: Annotated[str, Field(max_length=10, pattern=r"^[A-Za-z0-9]*$")] | None = Field(
        None, description="the aircraft's tail number, when known"
    )
    origin: Code = Field(description="FAA code of the New York airport (EWR, JFK, LGA)")
    dest: Code = Field(description="FAA code of the destination")
    scheduled_departure: datetime = Field(
        description="ISO 8601; without an offset it is New York local time"
    )
    distance: float | None = Field(None, ge=0, le=20_000, description="miles")
    as_of: datetime | None = Field(
        None,
        description="ISO 8601 (New York local time without an offset): predict from what was "
        "known by then; default and at most the scheduled departure (what the live store has "
        "been told by now, for a flight ahead)",
    )

    @field_validator("scheduled_departure", "as_of")
    @classmethod
    def _new_york_time(cls, value: datetime | None) -> datetime | None:
        return None if value is None else new_york_local(value)

    @field_validator("distance")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


def predict_request(max_rows: int) -> type[BaseModel]:
    """The /predict body, with the server's batch limit in its schema.

    pydantic-core counts the list while it validates it: it refuses at flight `max_rows + 1`,
    whatever the length of the list, and `fail_fast` stops at the first bad flight (without
    it, 10,000 empty flights were 50,000 errors, 0.2 s of building them alone)."""
    return create_model(
        "PredictRequest",
        flights=(
            list[Flight],
            Field(
                min_length=1,
                max_length=max_rows,
                fail_fast=True,
                description="one prediction per flight",
            ),
        ),
    )


class Prediction(BaseModel):
    delay_probability: float = Field(description="P(arrival more than 15 minutes late)")
    delayed: bool = Field(description="the probability against the model's decision threshold")
    defaults_used: list[str] = Field(
        description="features that were unknown and fell back to their training default"
    )
    as_of: str = Field(
        description="what the features knew up to (New York local time): the scheduled "
        "departure, or for a flight the online store answers, the earlier of it and the "
        "store's newest event"
    )
    stale: list[str] = Field(
        default_factory=list,
        description="event sources (departures, arrivals, schedules, weather) whose newest "
        "event is older than its maximum age at `as_of`: the features made from them may be "
        "out of date",
    )


class ModelRef(BaseModel):
    name: str
    version: str


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    model: ModelRef


EventValue = str | int | float | bool | None


def events_request(max_events: int) -> type[BaseModel]:
    """The /v1/events body. Each event is an object of scalars, checked one by one
    (`pipelines.event_validation`): a bad event is refused alone, with its index."""
    return create_model(
        "EventsRequest",
        events=(
            list[dict[str, EventValue]],
            Field(
                min_length=1,
                max_length=max_events,
                fail_fast=True,
                description="flights scheduled, departed, arrived, cancelled or diverted, "
                "and hourly weather, each with an id (a re-sent id is applied once)",
                examples=[[EXAMPLE_EVENT]],
            ),
        ),
    )


class RefusedEvent(BaseModel):
    index: int = Field(description="its position in the batch sent")
    field: str
    reason: str


class EventsResponse(BaseModel):
    accepted: int
    duplicates: int = Field(description="ids already applied: nothing changed")
    refused: list[RefusedEvent] = Field(description="quarantined, with their reason")


class ReloadRequest(BaseModel):
    force: bool = Field(False, description="reload even if the version is unchanged or refused")


class ReloadResponse(BaseModel):
    outcome: str
    version: str | None
    detail: str


class ErrorResponse(BaseModel):
    detail: str


class EventsInfo(BaseModel):
    """This worker's online store (`serving.live`): each worker has its own."""

    clock: str | None  # the newest observed time applied (New York local time)
    flights: int  # flights held within the retention horizon
    stream: str | None  # the Redis stream read (password masked); None: the local log
    position: str | None  # the last stream entry this worker applied
    caught_up: bool  # applied every entry the stream held when this worker started
    problem: str | None  # the stream unreachable, in words


class ModelInfo(BaseModel):
    """GET /model: what is served, where it came from, and the last reload."""

    name: str
    version: str
    source: str
    loaded_at: str  # ISO 8601, UTC
    onnx_sha256: str | None
    feature_spec_sha256: str | None
    decision_threshold: float
    providers: list[str]  # onnxruntime's execution providers, in order of preference
    inputs: list[str]
    train_months: list[str]
    last_reload: ReloadResponse | None
    # what keeps a newer version from being served, in words (MLflow unreachable since ...)
    problem: str | None = None
    pid: int  # the worker process that answered: with several workers, each has its own
    events: EventsInfo | None = None  # with events on


class MlflowError(BaseModel):
    """MLflow's scoring server's error body, so its clients read ours unchanged."""

    error_code: str
    message: str


# --- Open Inference Protocol (KServe V2) ---------------------------------------------------


class V2Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict | None = None
    data: list = Field(default_factory=list)  # empty when sent as binary after the JSON


class V2InferRequest(BaseModel):
    id: str | None = None
    parameters: dict | None = None
    inputs: list[V2Tensor] = Field(min_length=1)
    outputs: list[dict] | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[V2Tensor]


class V2Error(BaseModel):
    error: str


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2ServerLive(BaseModel):
    live: bool


class V2ServerReady(BaseModel):
    ready: bool


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]


class V2ModelReady(BaseModel):
    name: str
    ready: bool
