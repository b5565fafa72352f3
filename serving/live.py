"""Live features: the online store behind POST /v1/events, and the lookups /predict reads.

The served model's lookups were frozen when its feature table was built: they answer for the
flights inside that data (the history). The store (`pipelines.online.OnlineStore`) starts from
the same tables as of the build's last observed moment (`since`), and every event applied
after that moves it on; a flight scheduled after `since` is answered from the store, one
before it from the model's own lookups, exactly as before events existed. The store equals the
offline point-in-time table for the events it was given (`tests/pipelines/test_online.py`).
A hot swap starts a store from the new model's build and gives it what the old store learned
since, so the new version answers as a restart on it with the same events would.

Accepted events are appended to `<folder>/log.jsonl` (fsync'd before the answer) and replayed
at the next start, so a restart loses nothing it acknowledged; refused ones go to
`<folder>/quarantine.jsonl` with their reason. One writer at a time (a lock): the request
threads only read `lookups`, a reference swapped whole after each batch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.event_validation import validate_events
from pipelines.events import minutes_iso, to_minutes
from pipelines.lookups import LOOKUP_FILES, Lookups
from pipelines.online import Applied, Landed, OnlineStore
from pipelines.storage import read_npz_folder, read_npz_table
from pipelines.transform import feature_arrays, known_until
from serving.config import EventsConfig

if TYPE_CHECKING:
    from serving.runtime import LoadedModel

logger = logging.getLogger(__name__)

LOG, QUARANTINE = "log.jsonl", "quarantine.jsonl"


class LiveFeatures:
    def __init__(self, config: EventsConfig) -> None:
        self.config = config
        self.folder = config.folder  # None: in memory only (tests of the app)
        self._max_age = dataclasses.asdict(config.max_age_min)  # source -> minutes
        self._max_age_array = np.array(list(self._max_age.values()))
        self.store: OnlineStore | None = None
        self.lookups: Lookups | None = None  # the store's, published after each change
        self.airports: frozenset[str] = frozenset()
        self.carriers: frozenset[str] = frozenset()
        self.replayed = Applied()
        self.applied_at = 0.0  # when events were last applied (wall clock; 0: never)
        # each batch's arrivals applied (the labels): realized quality, the outcomes' log
        self.on_landed: list[Callable[[list[Landed]], None]] = []
        self._lock = threading.Lock()

    @property
    def started(self) -> bool:
        return self.store is not None

    def attach(self, model: LoadedModel) -> None:
        """Serve `model`'s predictions through the store. The first model's lookups start it
        (then the event log is replayed); a later model's start a new one, which takes in
        what the store it replaces learned since (`OnlineStore.absorb`), so a hot swap gains
        the new build's snapshot and loses no event: what a restart on that model with the
        same events gives."""
        store, until, airports = self._snapshot(model.bundle.lookups)
        with self._lock:
            previous = self.store
            if previous is not None:
                store.absorb(previous)
            self.store = store
            self.airports = airports
            self.carriers = frozenset(model.vocabulary("carrier"))
            self.lookups = store.lookups()
            model.live = ModelView(self, until)
            logger.info(
                "online store for %s v%s from its lookups as of %s%s: %d flights held",
                model.name,
                model.version,
                minutes_iso(until),
                "" if previous is None else " and the store it replaces",
                len(store),
            )
            if previous is None:
                self.replayed = self._replay()
                logger.info(
                    "%d logged events replayed (%d no longer applicable)",
                    self.replayed.applied,
                    len(self.replayed.refused),
                )

    def _snapshot(self, lookups_folder: Path) -> tuple[OnlineStore, float, frozenset[str]]:
        """A store of what a build knew (its lookup files, already checked against its spec)
        as of its last observed moment, or `config.since` if earlier; that moment; and the
        build's airports (what an event may name)."""
        flights = read_npz_folder(lookups_folder / LOOKUP_FILES["flight_events"])
        weather = read_npz_table(lookups_folder / LOOKUP_FILES["weather"])
        airports = read_npz_table(lookups_folder / LOOKUP_FILES["airports"])
        store = OnlineStore(read_npz_table(lookups_folder / LOOKUP_FILES["planes"]), airports)
        hours = to_minutes(weather["time_hour"])
        until = float(
            np.nanmax(
                [
                    np.nanmax(flights["departed_at"]),
                    np.nanmax(flights["arrived_at"]),
                    np.max(hours) if len(hours) else -np.inf,
                ]
            )
        )
        if self.config.since is not None:  # None: the build's last observed moment
            until = min(until, float(to_minutes(np.array([self.config.since]))[0]))
        # what the build knew of each flight's scheduled arrival: its arrival less its delay
        arrivals = (flights["arrived_at"] - flights["arr_delay"]).to_numpy("float64")
        store.load_snapshot(flights, weather, until, arrivals)
        return store, until, frozenset(airports["faa"].dropna())

    def _replay(self) -> Applied:
        """The local log (no stream): what was acknowledged before a restart."""
        path = None if self.folder is None else self.folder / LOG
        if self.config.stream_url or path is None or not path.exists():
            return Applied()  # a stream is read from its start by `serving.stream`
        records = []
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut by a crash mid-write was never acknowledged
        return self._apply(records)

    def check(self, records: list[Any]) -> tuple[list[dict], list[int], Applied]:
        """The rules alone (what a stream carries is checked before it is added): the typed
        events (`EVENT_FIELDS`), their indices in the batch, and the refusals (quarantined)."""
        self._require_started()
        checked = validate_events(records, self.airports, self.carriers)
        self.quarantine(records, checked.refused)
        return checked.records, checked.indices, Applied(refused=checked.refused)

    def ingest(self, records: list[Any]) -> Applied:
        """Without a stream: validate, apply, log what was accepted (fsync'd), quarantine what
        was refused."""
        with self._lock:
            self._require_started()
            report = self._apply(records, log=True)
            self.quarantine(records, report.refused)
            return report

    def apply_typed(self, events: list[dict]) -> Applied:
        """Events `check` typed (a stream's entry): applied, not checked again, nothing
        written; refusals indexed in `events`."""
        with self._lock:
            self._require_started()
            return self._apply_typed(events)

    def _require_started(self) -> None:
        if self.store is None:
            raise RuntimeError("the online store starts with the first model")

    def _apply(self, records: list[Any], log: bool = False) -> Applied:
        checked = validate_events(records, self.airports, self.carriers)
        applied = self._apply_typed(checked.records)
        refused = [(checked.indices[i], name, reason) for i, name, reason in applied.refused]
        if log and self.folder is not None:  # the events as sent: replayed, checked again
            out = {i for i, _, _ in applied.refused}
            accepted = [k for i, k in enumerate(checked.indices) if i not in out]  # duplicates too
            self._append(LOG, [json.dumps(records[k]) for k in accepted])
        return Applied(applied.applied, applied.duplicates, sorted([*checked.refused, *refused]))

    def _apply_typed(self, events: list[dict]) -> Applied:
        assert self.store is not None
        applied = self.store.apply(events)
        if applied.applied:
            self.lookups = self.store.lookups()  # swapped whole: readers never see it change
            self.applied_at = time.time()
        if applied.landed:
            for hook in self.on_landed:
                hook(applied.landed)
        return applied

    def quarantine(self, records: list[Any], refused: list[tuple[int, str, str]]) -> None:
        if self.folder is None or not refused:
            return
        now = datetime.now(UTC).isoformat()
        self._append(
            QUARANTINE,
            [
                json.dumps(
                    {"event": records[i], "field": name, "reason": reason, "received": now},
                    default=str,
                )
                for i, name, reason in refused
            ],
        )

    def _append(self, name: str, lines: list[str]) -> None:
        if not lines:
            return
        assert self.folder is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / name).open("a", encoding="utf-8") as out:
            out.write("".join(f"{line}\n" for line in lines))
            out.flush()
            os.fsync(out.fileno())

    def newest(self) -> dict[str, float]:
        """Each source's newest observed time (minutes on New York's clock)."""
        return {} if self.store is None else dict(self.store.newest)

    def context(
        self, columns: dict[str, np.ndarray], rows: int, since: float
    ) -> tuple[np.ndarray, list[tuple[str, ...]]]:
        """Per flight: the time its features knew up to (the scheduled departure or an earlier
        `as_of`, and for a flight the store answers, the store's newest event if earlier
        still), and the sources older than their maximum age then."""
        t = to_minutes(columns["scheduled_departure"])
        known = known_until(columns)
        store = self.store
        if store is None or self.lookups is None:
            return known, [()] * rows
        after = t > since
        as_of = np.where(after, np.minimum(known, store.clock), known)
        sources = list(self._max_age)
        newest = np.array([store.newest.get(source, -np.inf) for source in sources])
        old = (as_of[:, None] - newest > self._max_age_array) & after[:, None]
        stale: list[tuple[str, ...]] = [()] * rows
        for i in np.flatnonzero(old.any(axis=1)):
            stale[i] = tuple(source for source, o in zip(sources, old[i], strict=True) if o)
        return as_of, stale

    def features(
        self, columns: dict[str, np.ndarray], rows: int, history: Lookups, since: float
    ) -> dict[str, np.ndarray]:
        """The transform, each flight on the lookups that know its time: the store's after
        `since`, the model's own (`history`) before."""
        live = self.lookups
        if live is None:
            return feature_arrays(columns, history, rows)
        after = to_minutes(columns["scheduled_departure"]) > since
        if not after.any():
            return feature_arrays(columns, history, rows)
        if after.all():
            return feature_arrays(columns, live, rows)
        parts = [np.flatnonzero(~after), np.flatnonzero(after)]
        computed = [
            feature_arrays({k: v[part] for k, v in columns.items()}, lookups, len(part))
            for part, lookups in zip(parts, (history, live), strict=True)
        ]
        out = {}
        for name, first in computed[0].items():
            merged = np.empty(rows, dtype=first.dtype)
            merged[parts[0]], merged[parts[1]] = first, computed[1][name]
            out[name] = merged
        return out


@dataclass(frozen=True)
class ModelView:
    """One served model's view of the store: a flight scheduled after `since` (the model's
    build's last observed moment) is answered from the store, one before from the model's own
    lookups, exactly as before events existed. Per model, so a request still scored by the
    model a swap replaces keeps its own cut."""

    live: LiveFeatures
    since: float

    def features(
        self, columns: dict[str, np.ndarray], rows: int, history: Lookups
    ) -> dict[str, np.ndarray]:
        return self.live.features(columns, rows, history, self.since)

    def context(
        self, columns: dict[str, np.ndarray], rows: int
    ) -> tuple[np.ndarray, list[tuple[str, ...]]]:
        return self.live.context(columns, rows, self.since)
