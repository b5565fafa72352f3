"""Online events as clients send them (JSON objects) -> typed events the store applies.

The rules are `pipelines.rules`, the ones ingest checks bronze rows with: a departure more
than a day late, an unknown airport or a weather reading out of range is refused here for the
reason ingest would quarantine it. Each refused event comes back with its index, the field and
the reason, and the events after it are still checked: one bad event costs one event.

Times are ISO 8601 strings, New York local time unless they carry an offset (as `/predict`
reads them), and become minutes since the epoch on New York's clock. Each event says when it
became known (`observed`); it defaults to the moment the fact itself happened (a departure's
`at`, a weather hour, a cancelled flight's scheduled departure), and must be given for a
schedule (published ahead of the flight) and a diversion (known some time after it left).
A departure, an arrival or a weather reading cannot be observed before it happened: that would
be a leak.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from pipelines.contract import new_york_local
from pipelines.online import EVENT_FIELDS, KINDS
from pipelines.rules import CODE, DELAY, DISTANCE_MILES, FLIGHT_NUMBER, TAILNUM, WEATHER

EPOCH = datetime(1970, 1, 1)
MAX_ID_CHARS = 128
ISO_TIME = "an ISO 8601 time"
FLIGHT_KEY_FIELDS = ("carrier", "flight", "origin", "scheduled_departure")
REQUIRED = {
    "scheduled": (*FLIGHT_KEY_FIELDS, "dest", "observed"),
    "departed": (*FLIGHT_KEY_FIELDS, "at"),
    "arrived": (*FLIGHT_KEY_FIELDS, "at"),
    "cancelled": FLIGHT_KEY_FIELDS,
    "diverted": (*FLIGHT_KEY_FIELDS, "observed"),
    "weather": ("origin", "time_hour"),
}
# a scheduled arrival is unknown where the destination's time zone is (no arrival delay then)
OPTIONAL = {"scheduled": ("tailnum", "scheduled_arrival", "distance"), "weather": tuple(WEATHER)}
ALLOWED = {  # the fields an event of each kind may carry
    kind: frozenset({"id", "kind", "observed", *required, *OPTIONAL.get(kind, ())})
    for kind, required in REQUIRED.items()
}
FIELDS = frozenset().union(*ALLOWED.values())
TIMES = frozenset({"observed", "scheduled_departure", "scheduled_arrival", "at", "time_hour"})
SENT_AS = {"scheduled": "scheduled_departure"}  # a typed field's name in the events sent
_CODE, _TAILNUM = re.compile(CODE), re.compile(TAILNUM)


class RefusedEventError(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


@dataclass
class ValidatedEvents:
    """The typed events, in the order sent (records with the fields of `EVENT_FIELDS` their
    kind has: what the store applies), and each refused one's index (in the batch as sent),
    field and reason."""

    records: list[dict[str, Any]]
    indices: list[int] = field(default_factory=list)  # of each kept event in the batch
    refused: list[tuple[int, str, str]] = field(default_factory=list)

    @property
    def events(self) -> pd.DataFrame:
        """The typed events as a table of `EVENT_FIELDS` (NaN where a kind has no field)."""
        return pd.DataFrame(self.records, columns=EVENT_FIELDS)


def validate_events(
    records: list[Any],
    airports: frozenset[str] = frozenset(),
    carriers: frozenset[str] = frozenset(),
) -> ValidatedEvents:
    """Check each event against the rules; `airports` and `carriers`, when given, are the codes
    the model knows (an origin must be one of them, as ingest requires of bronze rows)."""
    kept, indices, refused = [], [], []
    for index, record in enumerate(records):
        try:
            kept.append(_typed(record, airports, carriers))
            indices.append(index)
        except RefusedEventError as problem:
            refused.append((index, problem.field, problem.reason))
    return ValidatedEvents(kept, indices, refused)


def _typed(record: Any, airports: frozenset[str], carriers: frozenset[str]) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise RefusedEventError("", "an event is a JSON object")
    unknown = sorted(set(record) - FIELDS)
    if unknown:
        raise RefusedEventError(unknown[0], "not a field of any event")
    event_id = record.get("id")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= MAX_ID_CHARS:
        raise RefusedEventError("id", f"a string of 1 to {MAX_ID_CHARS} characters")
    kind = record.get("kind")
    if kind not in REQUIRED:
        raise RefusedEventError("kind", f"one of {', '.join(KINDS)}")
    extra = sorted(name for name in set(record) - ALLOWED[kind] if record[name] is not None)
    if extra:
        raise RefusedEventError(extra[0], f"not a field of a {kind} event")
    for name in REQUIRED[kind]:
        if record.get(name) is None:
            raise RefusedEventError(name, f"required for a {kind} event")
    typed: dict[str, Any] = {"id": event_id, "kind": kind}
    if kind == "weather":
        typed["origin"] = _code(record, "origin", airports)
        hour = _minutes(record, "time_hour")
        if hour % 60:
            raise RefusedEventError("time_hour", "an hour: minutes and seconds zero")
        typed["time_hour"] = hour
        for name, bounds in WEATHER.items():
            typed[name] = _number(record, name, bounds, optional=True)
        fact = hour
    else:
        typed["carrier"] = _code(record, "carrier", carriers)
        typed["flight"] = _number(record, "flight", FLIGHT_NUMBER, integer=True)
        typed["origin"] = _code(record, "origin", airports)
        typed["scheduled"] = _minutes(record, "scheduled_departure")
        fact = typed["scheduled"]
        if kind == "scheduled":
            typed["dest"] = _code(record, "dest", frozenset())
            tailnum = record.get("tailnum")
            if tailnum is not None and not (isinstance(tailnum, str) and _TAILNUM.match(tailnum)):
                raise RefusedEventError("tailnum", f"a tail number matching {TAILNUM}")
            typed["tailnum"] = tailnum
            typed["scheduled_arrival"] = math.nan
            if record.get("scheduled_arrival") is not None:
                typed["scheduled_arrival"] = _minutes(record, "scheduled_arrival")
                if typed["scheduled_arrival"] <= typed["scheduled"]:
                    raise RefusedEventError("scheduled_arrival", "after the scheduled departure")
            typed["distance"] = _number(record, "distance", DISTANCE_MILES, optional=True)
        elif kind == "departed":
            typed["at"] = fact = _minutes(record, "at")
            delay = typed["at"] - typed["scheduled"]
            if not DELAY[0] <= delay <= DELAY[1]:
                raise RefusedEventError(
                    "at", f"a departure delay of {delay:.0f} min is outside {DELAY}"
                )
        elif kind == "arrived":  # the delay needs the schedule: the store checks it
            typed["at"] = fact = _minutes(record, "at")
    if record.get("observed") is None:
        typed["observed"] = fact
    else:
        typed["observed"] = _minutes(record, "observed")
        # (a schedule, a cancellation and a diversion may well be known before the departure)
        if kind in ("departed", "arrived", "weather") and typed["observed"] < fact:
            raise RefusedEventError("observed", "before the fact it reports")
    return typed


def _code(record: dict, name: str, known: frozenset[str]) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not _CODE.match(value):
        raise RefusedEventError(name, f"a code matching {CODE}")
    if known and value not in known:
        raise RefusedEventError(name, "not a known code")
    return value


def _number(
    record: dict,
    name: str,
    bounds: tuple[float, float],
    integer: bool = False,
    optional: bool = False,
) -> float:
    value = record.get(name)
    if value is None and optional:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RefusedEventError(name, "a number")
    if integer and value != int(value):
        raise RefusedEventError(name, "an integer")
    if not bounds[0] <= value <= bounds[1]:
        raise RefusedEventError(name, f"between {bounds[0]} and {bounds[1]}")
    return float(value)


def _minutes(record: dict, name: str) -> float:
    """An ISO 8601 time -> minutes since the epoch on New York's clock."""
    value = record.get(name)
    if not isinstance(value, str):
        raise RefusedEventError(name, ISO_TIME)
    try:
        return _minutes_of(value)
    except ValueError as error:
        raise RefusedEventError(name, str(error)) from None


@functools.lru_cache(maxsize=16_384)
def _minutes_of(text: str) -> float:
    """Cached: a batch names the same times again and again (a flight's scheduled departure in
    each of its events, an hour in each airport's weather), and parsing is most of a check."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(ISO_TIME) from None
    return float((new_york_local(moment) - EPOCH).total_seconds() // 60)


def as_records(events: pd.DataFrame) -> list[dict[str, Any]]:
    """Typed events -> the JSON objects a client sends (what `validate_events` reads back):
    what a replay publishes."""
    records = []
    for event in events.reindex(columns=EVENT_FIELDS).to_dict("records"):
        sent = ALLOWED[event["kind"]]
        record: dict[str, Any] = {}
        for name, value in event.items():
            name = SENT_AS.get(name, name)
            if name not in sent or value is None or value != value:  # NaN: not sent
                continue
            if name in TIMES:
                value = (EPOCH + timedelta(minutes=float(value))).isoformat()
            elif name == "flight":
                value = int(value)
            record[name] = value
        records.append(record)
    return records
