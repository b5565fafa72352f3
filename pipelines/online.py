"""The online store: flight events as they become observable, kept in the same structures the
offline feature graph builds, so the same transform gives the same features.

Events (one row each, `EVENT_FIELDS`):
- `scheduled`: a flight and its aircraft, its scheduled departure and arrival (New York local
  time) and distance; published ahead of the flight (`SCHEDULE_AHEAD_H` in a replay);
- `departed`, `arrived`: the actual time (New York local time); the delay follows from the
  schedule; an arrival is also the flight's label;
- `cancelled`, `diverted`: the flight will not depart, or will not arrive where scheduled;
- `weather`: the hourly observation at an airport.

Times are minutes since the epoch on New York's local clock (`pipelines.events.to_minutes`),
the clock every feature is computed on. Each event has an id; a re-sent id is applied once.

The store keeps each flight's row of `pipelines.events.flight_events` (what the offline graph
derives from a bronze row) and the weather rows, within a retention horizon behind its clock
(the newest observed time): the longest any feature looks back (`LOOKBACK_H`). It hands the
transform a `Lookups` built from exactly those rows, rebuilt when an event changed them, and
the transform's windows only ever count what was observed strictly before the prediction
time; so at any as-of time the features equal the offline table's for every flight whose
events up to then were applied, which `tests/pipelines/test_online.py` checks by replaying
the test months.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd

from pipelines.events import (
    EVENT_COLUMNS,
    flight_events,
    flight_identity,
    identity_of,
    scheduled_arrivals,
    to_minutes,
)
from pipelines.lookups import (
    EVENT_KEYS,
    EVENT_VALUES,
    OWN_EVENT_COLUMNS,
    WEATHER_COLUMNS,
    Books,
    Codebook,
    KeyedRows,
    Lookups,
    event_indexes,
    holiday_days,
    weather_table,
)
from pipelines.rules import DELAY, MAX_DELAY_MIN
from pipelines.transform import LOOKBACK_H

HOUR = 60
SCHEDULE_AHEAD_H = 24  # a replay publishes each schedule this long before its departure
RETENTION_MIN = LOOKBACK_H * HOUR
# what left the horizon is dropped every this much event time (a scan of every row): the store
# holds up to this much more than its horizon, which no feature reads
TRIM_EVERY_MIN = 6 * HOUR
TOO_OLD = f"older than the retention horizon ({LOOKBACK_H} h)"  # the store's and the sink's
KINDS = ("scheduled", "departed", "arrived", "cancelled", "diverted", "weather")
SOURCES = {  # the freshness of each source is the time of its newest event
    "scheduled": "schedules",
    "cancelled": "schedules",
    "departed": "departures",
    "diverted": "arrivals",
    "arrived": "arrivals",
    "weather": "weather",
}
FLIGHT_KEY = ["carrier", "flight", "origin", "scheduled"]
EVENT_FIELDS = [
    "id",
    "kind",
    "observed",  # when it became known (minutes); what the replay clock orders by
    *FLIGHT_KEY,
    "dest",
    "tailnum",
    "scheduled_arrival",
    "distance",
    "at",  # departed / arrived: the actual time
    "time_hour",  # weather
    *WEATHER_COLUMNS,
]
# a flight's row in the store; its identity (`flight_identity`) and the codes of its keys in
# the store's codebooks computed once, when it arrives, for the lookups
_STATE = [*EVENT_COLUMNS, "scheduled_arrival", "identity", *(f"{k}_code" for k in EVENT_KEYS)]
_KEYS = [_STATE.index(name) for name in EVENT_KEYS]  # the fields coded
_FIRST_CODE = _STATE.index(f"{EVENT_KEYS[0]}_code")
_ROW = {name: i for i, name in enumerate(_STATE)}
_IDENTITY, _SCHEDULED = _ROW["identity"], _ROW["scheduled"]


class Landed(NamedTuple):
    """An arrival applied: the flight (`identity_of`, its scheduled departure in minutes),
    when it landed and its delay (minutes, New York's clock)."""

    identity: str
    scheduled: float
    arrived_at: float
    delay: float


@dataclass
class Applied:
    """What a batch of events did: counts, and each refused event's index, field and reason."""

    applied: int = 0
    duplicates: int = 0
    refused: list[tuple[int, str, str]] = field(default_factory=list)
    landed: list[Landed] = field(default_factory=list)  # the arrivals applied: the labels


def _event_id(*parts: object) -> str:
    return hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=10).hexdigest()


def events_from_bronze(
    flights: pd.DataFrame, weather: pd.DataFrame, airports: pd.DataFrame
) -> pd.DataFrame:
    """Bronze rows as the events that would have told the store about them, in observed-time
    order: what `mlops replay` publishes and the parity test replays."""
    rows = flight_events(flights, airports)
    base = {
        "carrier": rows["carrier"],
        "flight": rows["flight"],
        "origin": rows["origin"],
        "scheduled": rows["scheduled"],
    }
    identity = flight_identity(
        rows["carrier"].to_numpy(object), rows["flight"].to_numpy(), rows["origin"].to_numpy(object)
    )
    key = [f"{i}@{s:.0f}" for i, s in zip(identity, rows["scheduled"], strict=True)]
    scheduled = pd.DataFrame(
        base
        | {
            "kind": "scheduled",
            "observed": rows["scheduled"] - SCHEDULE_AHEAD_H * HOUR,
            "dest": rows["dest"],
            "tailnum": rows["tailnum"],
            "scheduled_arrival": scheduled_arrivals(flights, airports),
            "distance": flights["distance"].to_numpy("float64", na_value=np.nan),
            "key": key,
        }
    )
    left = rows["departed_at"].notna()
    departed = pd.DataFrame(base | {"kind": "departed", "at": rows["departed_at"], "key": key})[
        left
    ]
    landed = rows["arrived_at"].notna()
    arrived = pd.DataFrame(base | {"kind": "arrived", "at": rows["arrived_at"], "key": key})[landed]
    cancelled = pd.DataFrame(base | {"kind": "cancelled", "key": key})[~left]
    diverted = pd.DataFrame(base | {"kind": "diverted", "key": key})[left & ~landed]
    departed["observed"] = departed["at"]
    arrived["observed"] = arrived["at"]
    cancelled["observed"] = cancelled["scheduled"]  # known, at the latest, when it did not leave
    diverted["observed"] = rows["departed_at"][left & ~landed]
    hours = to_minutes(weather["time_hour"])
    observations = weather[["origin", *WEATHER_COLUMNS]].assign(
        kind="weather", observed=hours, time_hour=hours
    )
    observations["key"] = [
        f"{o}@{h:.0f}" for o, h in zip(observations["origin"], hours, strict=True)
    ]
    events = pd.concat(
        [scheduled, departed, arrived, cancelled, diverted, observations], ignore_index=True
    )
    events["id"] = [_event_id(k, key) for k, key in zip(events["kind"], events["key"], strict=True)]
    order = np.lexsort((events["kind"].map(KINDS.index).to_numpy(), events["observed"].to_numpy()))
    return events.iloc[order].reindex(columns=EVENT_FIELDS).reset_index(drop=True)


class OnlineStore:
    """Flights and weather within the retention horizon, and the lookups built from them.

    Not thread-safe: one writer (the server's event loop, or a replay) applies events, and
    `lookups()` is read between batches.
    """

    def __init__(
        self, planes: pd.DataFrame, airports: pd.DataFrame, retention_min: float = RETENTION_MIN
    ) -> None:
        self.planes = KeyedRows.build(planes, "tailnum")  # fixed: what the model trained with
        self.airports = KeyedRows.build(airports, "faa")
        self.retention_min = retention_min
        self.flights: dict[tuple, list] = {}  # FLIGHT_KEY -> the flight's _STATE row
        self.weather: dict[tuple[str, float], list] = {}  # (origin, hour) -> WEATHER_COLUMNS
        self.seen: dict[str, float] = {}  # event id -> observed, within the horizon
        self._landed: list[Landed] = []  # the arrivals of the batch being applied
        self.clock = -np.inf  # the newest observed time
        self.newest: dict[str, float] = {}  # source -> the time of its newest event
        # keys -> codes for the store's life (weather's airports are `origin`'s): the keys of
        # every flight it held, a bounded set (airports, carriers, aircraft, flight numbers)
        self.books: Books = {name: Codebook() for name in EVENT_KEYS}
        self._lookups: Lookups | None = None
        self._stale = {"flights", "weather"}  # what the next `lookups()` rebuilds
        self._trimmed_at = -np.inf
        # the flights' columns the indexes are built from (`EVENT_KEYS`' codes, `EVENT_VALUES`),
        # in `flights`' order, kept between rebuilds: a batch appends the flights it
        # scheduled and patches the outcomes it changed instead of turning every row into
        # columns again (None: from the rows, after a trim or a snapshot)
        self._columns: dict[str, np.ndarray] | None = None
        self._position: dict[tuple, int] = {}  # FLIGHT_KEY -> its row in `_columns`
        self._added: list[tuple] = []  # flights scheduled since `_columns` was built
        self._changed: set[tuple] = set()  # flights departed or arrived since

    # bootstrap

    def load_snapshot(
        self, events: pd.DataFrame, weather: pd.DataFrame, until: float, arrivals: np.ndarray
    ) -> None:
        """What a feature build knew, as of `until` (minutes): each flight's row of
        `flight_events` with the outcomes observed after `until` blanked, and the weather
        observed by then; `arrivals` is each row's scheduled arrival (New York minutes)."""
        # a flight scheduled before the horizon may have landed after it (a day late at most)
        since = until - self.retention_min - MAX_DELAY_MIN
        keep = (events["scheduled"] >= since).to_numpy() & (
            events["scheduled"] <= until + SCHEDULE_AHEAD_H * HOUR
        ).to_numpy()
        rows = events[keep].copy()
        arrival = np.asarray(arrivals, dtype="float64")[keep]
        late_dep = ~(rows["departed_at"] <= until)
        rows.loc[late_dep, ["departed_at", "dep_delay"]] = np.nan
        late_arr = ~(rows["arrived_at"] <= until)
        rows.loc[late_arr, ["arrived_at", "arr_delay"]] = np.nan
        rows["scheduled_arrival"] = arrival
        carrier, origin = rows["carrier"].to_numpy(object), rows["origin"].to_numpy(object)
        rows["identity"] = flight_identity(carrier, rows["flight"].to_numpy(), origin)
        for row in rows[_STATE[:_FIRST_CODE]].itertuples(index=False):
            self.flights[(row.carrier, row.flight, row.origin, row.scheduled)] = self._coded(row)
        hours = to_minutes(weather["time_hour"])
        seen = (hours <= until) & (hours >= until - self.retention_min)
        for origin, hour, values in zip(
            weather["origin"].to_numpy(object)[seen],
            hours[seen],
            weather[WEATHER_COLUMNS].to_numpy("float64", na_value=np.nan)[seen],
            strict=True,
        ):
            self.weather[(origin, hour)] = list(values)
        self.clock = until
        self.newest = dict.fromkeys(set(SOURCES.values()), until)
        self._from_rows()
        self._trim()

    def absorb(self, other: OnlineStore) -> None:
        """Take in what `other`, the store this snapshot replaces, learned that the snapshot
        does not hold: its flights, the outcomes and scheduled arrivals this one lacks, its
        weather hours, the ids it applied (a re-sent event stays a duplicate) and its clock.
        What both hold is kept as the snapshot has it (the newer build's data)."""
        for key, row in other.flights.items():
            mine = self.flights.get(key)
            if mine is None:
                self.flights[key] = self._coded(row)  # in this store's codebooks
                continue
            for at in (6, 8):  # departed_at, arrived_at, each with its delay after it
                if mine[at] != mine[at] and row[at] == row[at]:  # NaN here, known there
                    mine[at], mine[at + 1] = row[at], row[at + 1]
            if mine[10] != mine[10]:
                mine[10] = row[10]
        for key, values in other.weather.items():
            self.weather.setdefault(key, list(values))
        self.seen.update(other.seen)
        self._from_rows()  # rows added and outcomes filled in
        self.clock = max(self.clock, other.clock)
        for source, newest in other.newest.items():
            self.newest[source] = max(self.newest.get(source, -np.inf), newest)
        self._trim()

    def _coded(self, row: list | tuple) -> list:
        """A flight's row (`_STATE` up to the codes) and its keys' codes in this store's
        codebooks."""
        kept = list(row[:_FIRST_CODE])
        codes = [self.books[name].add(kept[i]) for name, i in zip(EVENT_KEYS, _KEYS, strict=True)]
        return kept + codes

    # events

    def apply(self, events: pd.DataFrame | list[dict]) -> Applied:
        """Apply typed events (`EVENT_FIELDS`; as records, each with the fields its kind
        has, as `pipelines.event_validation` types them) in order; refuse, with the field and
        the reason, an event the store cannot place (older than the horizon, a flight it was
        never told of)."""
        report = Applied()
        if isinstance(events, pd.DataFrame):
            records = events.reindex(columns=EVENT_FIELDS).to_dict("records")
        else:
            records = events
        self._landed = report.landed
        for index, event in enumerate(records):
            refused = self._apply_one(event)
            if refused is None:
                report.applied += 1
            elif refused == ("id", "duplicate"):
                report.duplicates += 1
            else:
                report.refused.append((index, *refused))
        if report.applied and self.clock - self._trimmed_at >= TRIM_EVERY_MIN:
            self._trim()
        return report

    def _apply_one(self, event: dict) -> tuple[str, str] | None:
        event_id, kind, observed = event["id"], event["kind"], event["observed"]
        if event_id in self.seen:
            return ("id", "duplicate")
        if kind not in KINDS:
            return ("kind", f"not one of {', '.join(KINDS)}")
        if observed != observed:  # NaN
            return ("observed", "missing")
        if observed < self.clock - self.retention_min:
            return ("observed", TOO_OLD)
        if kind == "weather":
            key = (event["origin"], event["time_hour"])
            if key in self.weather:
                return ("time_hour", "this airport's observation for this hour is already in")
            self.weather[key] = [event[c] for c in WEATHER_COLUMNS]
            self._stale.add("weather")
        else:
            problem = self._apply_flight(kind, event)
            if problem is not None:
                return problem
        self.seen[event_id] = observed
        self.clock = max(self.clock, observed)
        source = SOURCES[kind]
        self.newest[source] = max(self.newest.get(source, -np.inf), observed)
        return None

    def _apply_flight(self, kind: str, event: dict) -> tuple[str, str] | None:
        key = (event["carrier"], event["flight"], event["origin"], event["scheduled"])
        if kind == "scheduled":
            if key in self.flights:
                return (
                    "scheduled",
                    "this flight is already scheduled (send a new id to change it)",
                )
            self.flights[key] = self._coded(
                [
                    event["origin"],
                    event["dest"],
                    event["carrier"],
                    event["flight"],
                    event["tailnum"],
                    event["scheduled"],
                    np.nan,
                    np.nan,
                    np.nan,
                    np.nan,
                    event["scheduled_arrival"],
                    identity_of(event["carrier"], event["flight"], event["origin"]),
                ]
            )
            self._added.append(key)
            self._stale.add("flights")
            return None
        row = self.flights.get(key)
        if row is None:
            return ("scheduled", "no such flight scheduled: send its `scheduled` event first")
        if kind == "departed":
            row[6], row[7] = event["at"], event["at"] - row[5]
        elif kind == "arrived":  # the delay needs the schedule, so it is checked here
            delay = event["at"] - row[10]
            if not DELAY[0] <= delay <= DELAY[1]:  # NaN (no scheduled arrival) too
                return ("at", f"an arrival delay of {delay:.0f} min is outside {DELAY}")
            row[8], row[9] = event["at"], delay
            self._landed.append(Landed(row[_IDENTITY], row[_SCHEDULED], event["at"], delay))
        else:
            return None  # cancelled, diverted: nothing a feature reads changes
        self._changed.add(key)
        self._stale.add("flights")
        return None

    def _trim(self) -> None:
        horizon = self.clock - self.retention_min
        flights = {
            k: row
            for k, row in self.flights.items()
            if row[5] >= horizon or row[6] >= horizon or row[8] >= horizon  # NaN: False
        }
        weather = {k: v for k, v in self.weather.items() if k[1] >= horizon}
        if len(flights) < len(self.flights):
            self._from_rows()  # rows gone: positions change
        if len(weather) < len(self.weather):
            self._stale.add("weather")
        self.flights, self.weather = flights, weather
        self.seen = {k: t for k, t in self.seen.items() if t >= horizon}
        self._trimmed_at = self.clock

    # reads

    def lookups(self) -> Lookups:
        """The lookups of what the store holds now, rebuilt where an event changed them (the
        weather table, the flights' indexes, or both), from the rows' codes and values as
        arrays: no DataFrame, no string."""
        if self._lookups is not None and not self._stale:
            return self._lookups
        parts = {}
        if "flights" in self._stale or self._lookups is None:
            parts |= event_indexes(self.books, self._flight_columns())
        if "weather" in self._stale or self._lookups is None:
            origin = self.books["origin"]
            weather = {
                "origin": np.array([origin.add(o) for o, _ in self.weather], dtype="int64"),
                "time_hour": np.array([hour for _, hour in self.weather], dtype="float64"),
                "values": np.array(list(self.weather.values()), dtype="float64").reshape(
                    len(self.weather), len(WEATHER_COLUMNS)
                ),
            }
            parts["weather"] = weather_table(self.books, weather)
        if self._lookups is None:
            self._lookups = Lookups(
                planes=self.planes, airports=self.airports, holidays=holiday_days(), **parts
            )
        else:
            self._lookups = dataclasses.replace(self._lookups, **parts)
        self._stale = set()
        return self._lookups

    def _from_rows(self) -> None:
        """The next rebuild turns every flight's row into columns again (positions moved)."""
        self._columns = None
        self._stale.add("flights")

    def _flight_columns(self) -> dict[str, np.ndarray]:
        """The flights' columns for `event_indexes`, in `flights`' order: the columns of the
        last rebuild with the flights scheduled since appended and the outcomes changed since
        patched (what turning every row into columns gives, at the cost of what changed)."""
        if self._columns is None:
            self._position = {key: i for i, key in enumerate(self.flights)}
            self._columns = _as_columns(list(self.flights.values()))
        else:
            for key in self._added:
                self._position[key] = len(self._position)
            added = _as_columns([self.flights[key] for key in self._added])
            # new arrays (concatenate copies, none added too): those of the last rebuild are
            # never written to
            self._columns = {
                name: np.concatenate([values, added[name]])
                for name, values in self._columns.items()
            }
            for key in self._changed:
                row, at = self.flights[key], self._position[key]
                for name in OWN_EVENT_COLUMNS:  # what an event changes
                    self._columns[name][at] = row[_ROW[name]]
        self._added, self._changed = [], set()
        return self._columns

    def __len__(self) -> int:
        return len(self.flights)


def _as_columns(rows: list[list]) -> dict[str, np.ndarray]:
    """Flights' rows (`_STATE`) as the columns `event_indexes` reads."""
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(_STATE)
    return {name: np.array(columns[_ROW[f"{name}_code"]], dtype="int64") for name in EVENT_KEYS} | {
        name: np.array(columns[_ROW[name]], dtype="float64") for name in EVENT_VALUES
    }
