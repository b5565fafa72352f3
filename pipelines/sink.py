"""The sink: the events a server accepted, back to bronze as the rows `mlops data ingest` would
have written, so that the next feature build (and `mlops retrain`) trains on what was served.

A flight becomes one bronze row when its outcome is known: `arrived`, `cancelled` or
`diverted` (the outcome is the label). Until then its `scheduled` and `departed` events wait
in the sink's state; a flight with no outcome 72 h after its scheduled departure is
quarantined with that reason. A weather event is a weather row at once. The rows go through
the schemas ingest validates with (`pipelines.schemas.validate`), so a row ingest would
quarantine is quarantined here, with the same reason; events the sink cannot place (a
departure of a flight it was never told of, one for a flight already written, an event older
than the retention horizon, as the online store refuses it) go to `quarantine/events/`.

Exactly once, across a kill -9: each batch is numbered; its parts are written as
`events-<batch>.parquet` (in `bronze/<table>/month=YYYY-MM/` and `quarantine/<table>/`), each
atomically, and then the state (`data/sink/state.json`: the batch number, the position in the
source, the flights waiting, the ids seen within the horizon) replaces the old one in one
rename: the commit. A sink that starts removes the parts of any batch after the committed one
(a batch cut by a crash) and reads the source again from the committed position; a re-sent
id within the horizon is written once.

A later `mlops data ingest` of a month from a source replaces that month folder whole,
the sink's parts included: the source is then the record of that month.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.errors import SourceError
from pipelines.events import local_hhmm, sched_arr_hhmm, zone_of
from pipelines.ingest import enrich, month_keys
from pipelines.layout import DataLayout
from pipelines.online import EVENT_FIELDS, RETENTION_MIN, TOO_OLD
from pipelines.schemas import SCHEMAS, validate
from pipelines.storage import read_parquet_folder, write_bytes_atomic, write_parquet_atomic

PART = "events-{batch:08d}.parquet"
EXPIRE_MIN = RETENTION_MIN  # a flight with no outcome this long after its schedule
TABLES = ("flights", "weather")


@dataclass
class SinkCounts:
    """What the sink has done since its state began (all batches), or in one batch."""

    events: int = 0
    duplicates: int = 0
    flights: int = 0  # bronze rows written
    weather: int = 0
    quarantined: int = 0  # rows the schemas refused and events the sink could not place
    waiting: int = 0  # flights scheduled, outcome not yet known (the state's, not a sum)

    def add(self, other: SinkCounts) -> None:
        for name in (f.name for f in fields(self) if f.name != "waiting"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.waiting = other.waiting


@dataclass
class Read:
    """What a source gave from a position: the typed events, the position after them, the
    entries they came in with the moment each stops mattering (a stream), and what could not
    be read as events (with the reason)."""

    events: pd.DataFrame
    position: str
    entries: list[tuple[str, float]] = field(default_factory=list)
    unreadable: list[tuple[dict, str]] = field(default_factory=list)


@dataclass
class SinkState:
    batch: int = 0  # the last committed batch
    position: str = ""  # where the source resumes (a stream entry id, a log's byte offset)
    clock: float = -math.inf  # the newest observed time
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> the flight
    # what is in bronze, within the horizon: flight key -> its scheduled departure, and
    # `airport@hour` -> the weather hour
    written: dict[str, float] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)  # event id -> observed
    # the source's entries not yet trimmed, with the newest time each carries (the stream)
    entries: list[tuple[str, float]] = field(default_factory=list)
    totals: SinkCounts = field(default_factory=SinkCounts)

    def to_json(self) -> bytes:
        data = asdict(self)
        return json.dumps(data, allow_nan=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> SinkState:
        data = json.loads(raw)
        data["entries"] = [tuple(e) for e in data["entries"]]
        data["totals"] = SinkCounts(**data["totals"])
        return cls(**data)


def _date_parts(times: pd.Series) -> dict[str, pd.Series]:
    return {"year": times.dt.year, "month": times.dt.month, "day": times.dt.day}


def _key(event: Mapping[str, Any]) -> str:
    return f"{event['carrier']}|{event['flight']:.0f}|{event['origin']}|{event['scheduled']:.0f}"


class EventSink:
    """One writer (the caller holds the data lock around `write`)."""

    def __init__(self, layout: DataLayout) -> None:
        self.layout = layout
        self.folder = layout.root / "sink"
        self.state = self._load()
        airports = read_parquet_folder(layout.bronze("airports"))
        airlines = read_parquet_folder(layout.bronze("airlines"))
        if airports.empty or airlines.empty:
            raise SourceError(
                f"no bronze airports or airlines under {layout.root}: run `mlops data ingest` "
                "first (the sink checks rows against them)"
            )
        self.airports = frozenset(airports["faa"].dropna())
        self.carriers = frozenset(airlines["carrier"].dropna())
        self._airport_table = airports
        self._zones = zone_of(airports)
        self._remove_uncommitted()

    def _load(self) -> SinkState:
        path = self.folder / "state.json"
        return SinkState.from_json(path.read_bytes()) if path.exists() else SinkState()

    def _part_folders(self) -> Iterable[Path]:
        for table in TABLES:
            yield from self.layout.bronze(table).glob("month=*")
        for table in (*TABLES, "events"):
            yield self.layout.quarantine(table)

    def _remove_uncommitted(self) -> None:
        """The parts of a batch after the committed one: a crash cut it before its commit."""
        for folder in self._part_folders():
            for path in folder.glob("events-*.parquet"):
                if int(path.stem.split("-")[1]) > self.state.batch:
                    path.unlink()

    # a batch

    def write(self, read: Read) -> SinkCounts:
        """Fold the typed events (`EVENT_FIELDS`, in the order the server applied them) into
        the state, write the rows they complete, quarantine what cannot be placed (and what
        could not be read), and commit the position after them."""
        state = self.state
        batch = state.batch + 1
        refused: list[tuple[dict[str, Any], str]] = list(read.unreadable)
        counts = SinkCounts(events=len(read.events) + len(refused))
        flights: list[dict[str, Any]] = []
        weather: list[dict[str, Any]] = []
        for event in read.events.reindex(columns=EVENT_FIELDS).to_dict("records"):
            problem = self._fold(event, flights, weather)
            if problem == "duplicate":
                counts.duplicates += 1
            elif problem is not None:
                refused.append((event, problem))
        self._expire(refused)
        rows = {"flights": (self._flight_rows, flights), "weather": (self._weather_rows, weather)}
        for table, (build, records) in rows.items():
            if not records:
                continue
            kept, bad = self._validated(table, build(records))
            counts.quarantined += len(bad)
            setattr(counts, table, len(kept))
            for month, rows in kept.groupby(month_keys(kept["year"], kept["month"])):
                path = self.layout.month_partition(table, str(month)) / PART.format(batch=batch)
                write_parquet_atomic(rows.reset_index(drop=True), path)
            if len(bad):
                path = self.layout.quarantine(table) / PART.format(batch=batch)
                write_parquet_atomic(bad.assign(source="events"), path)
        if refused:
            counts.quarantined += len(refused)
            rows = pd.DataFrame(
                {
                    "id": [e.get("id") for e, _ in refused],
                    "kind": [e.get("kind") for e, _ in refused],
                    "event": [json.dumps(e, default=str) for e, _ in refused],
                    "reason": [reason for _, reason in refused],
                }
            )
            path = self.layout.quarantine("events") / PART.format(batch=batch)
            write_parquet_atomic(rows, path)
        counts.waiting = len(state.pending)
        state.batch, state.position = batch, read.position
        state.entries = [*state.entries, *read.entries]
        state.totals.add(counts)
        self._commit()
        return counts

    def _commit(self) -> None:
        write_bytes_atomic(self.state.to_json(), self.folder / "state.json")

    def trimmed(self, upto: int) -> None:
        """The first `upto` entries were trimmed from the source."""
        self.state.entries = self.state.entries[upto:]
        self._commit()

    # the fold: the online store's rules for what can be placed

    def _fold(
        self, event: dict[str, Any], flights: list[dict[str, Any]], weather: list[dict[str, Any]]
    ) -> str | None:
        state = self.state
        if event["id"] in state.seen:
            return "duplicate"
        observed = event["observed"]
        if observed < state.clock - RETENTION_MIN:
            return TOO_OLD
        kind = event["kind"]
        if kind == "weather":
            key = f"{event['origin']}@{event['time_hour']:.0f}"
            if key in state.written:
                return "this airport's observation for this hour is already in bronze"
            weather.append(event)
            state.written[key] = event["time_hour"]
        else:
            key = _key(event)
            if key in state.written:
                return "this flight is already in bronze (its outcome was written)"
            flight = state.pending.get(key)
            if kind == "scheduled":
                if flight is not None:
                    return "this flight is already scheduled"
                state.pending[key] = {**event, "departed_at": math.nan, "arrived_at": math.nan}
            elif flight is None:
                return "no such flight scheduled: its `scheduled` event never came"
            elif kind == "departed":
                flight["departed_at"] = event["at"]
            else:  # an outcome: the flight is complete
                if kind == "arrived":
                    flight["arrived_at"] = event["at"]
                flights.append(flight)
                state.written[key] = flight["scheduled"]
                del state.pending[key]
        state.seen[event["id"]] = observed
        state.clock = max(state.clock, observed)
        return None

    def _expire(self, refused: list[tuple[dict[str, Any], str]]) -> None:
        state = self.state
        horizon = state.clock - RETENTION_MIN
        for key, flight in list(state.pending.items()):
            if flight["scheduled"] < state.clock - EXPIRE_MIN:
                reason = f"no outcome within {EXPIRE_MIN // 60} h of its scheduled departure"
                refused.append(({k: flight[k] for k in EVENT_FIELDS}, reason))
                del state.pending[key]
        state.written = {k: t for k, t in state.written.items() if t >= horizon - EXPIRE_MIN}
        state.seen = {k: t for k, t in state.seen.items() if t >= horizon}

    # rows as the sources write them

    def _flight_rows(self, flights: list[dict[str, Any]]) -> pd.DataFrame:
        f = pd.DataFrame(flights)
        scheduled = pd.to_datetime(f["scheduled"], unit="m")
        departed = pd.to_datetime(f["departed_at"], unit="m")
        rows = pd.DataFrame(
            {
                **_date_parts(scheduled),
                "dep_time": (departed.dt.hour * 100 + departed.dt.minute).astype("float64"),
                "sched_dep_time": scheduled.dt.hour * 100 + scheduled.dt.minute,
                "dep_delay": f["departed_at"] - f["scheduled"],
                "arr_time": local_hhmm(f["arrived_at"], f["dest"], self._zones),
                "sched_arr_time": sched_arr_hhmm(
                    f["scheduled"], f["scheduled_arrival"], f["dest"], self._airport_table
                ),
                "arr_delay": f["arrived_at"] - f["scheduled_arrival"],
                "carrier": f["carrier"],
                "flight": f["flight"],
                "tailnum": f["tailnum"],
                "origin": f["origin"],
                "dest": f["dest"],
                "air_time": np.nan,  # no event says how long it was in the air
                "distance": f["distance"],
            }
        )
        return rows[SCHEMAS["flights"].columns]

    def _weather_rows(self, weather: list[dict[str, Any]]) -> pd.DataFrame:
        w = pd.DataFrame(weather)
        hour = pd.to_datetime(w["time_hour"], unit="m")
        return w.assign(**_date_parts(hour), hour=hour.dt.hour)[SCHEMAS["weather"].columns]

    def _validated(self, table: str, raw: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        result = validate(SCHEMAS[table], raw, self.carriers, self.airports)
        kept = enrich(table, result.kept)
        if table == "flights":
            kept = kept.sort_values("scheduled_departure", kind="stable")
        return kept, result.quarantined
