"""Live features: the online store behind POST /v1/events, and the lookups /predict reads.

The served model's lookups were frozen when its feature table was built: they answer for the
flights inside that data (the history). The store (`pipelines.online.OnlineStore`) starts from
the same tables as of the build's last observed moment (`since`), and every event applied
after that moves it on; a flight scheduled after `since` is answered from the store, one
before it from the model's own lookups, exactly as before events existed. The store equals the
offline point-in-time table for the events it was given (`tests/pipelines/test_online.py`).

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
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipelines.event_validation import as_records, validate_events
from pipelines.events import to_minutes
from pipelines.lookups import LOOKUP_FILES, Lookups
from pipelines.online import EVENT_FIELDS, Applied, OnlineStore
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
        self.since = np.inf  # flights scheduled after this are answered from the store
        self.lookups: Lookups | None = None  # the store's, published after each change
        self.airports: frozenset[str] = frozenset()
        self.carriers: frozenset[str] = frozenset()
        self.replayed = Applied()
        self._lock = threading.Lock()

    @property
    def started(self) -> bool:
        return self.store is not None

    def attach(self, model: LoadedModel) -> None:
        """Serve `model`'s predictions through this store, started from its lookups if it is
        the first."""
        self.start(model.bundle.lookups, model.vocabulary("carrier"))
        model.live = self

    def start(self, lookups_folder: Path, carriers: list[str]) -> None:
        """Once, from the first served model's lookup files (already checked against its
        spec), then the event log replayed. Later models keep this store: its planes and
        airports are the dimension tables every build of this data shares."""
        with self._lock:
            if self.store is not None:
                return
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
            self.store, self.since = store, until
            self.airports = frozenset(airports["faa"].dropna())
            self.carriers = frozenset(carriers)
            self.lookups = store.lookups()
            self.replayed = self._replay()
            logger.info(
                "online store from the model's lookups as of %s: %d flights held, %d logged "
                "events replayed (%d no longer applicable)",
                _iso(until),
                len(store),
                self.replayed.applied,
                len(self.replayed.refused),
            )

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
        typed = checked.events.to_dict("records")
        return typed, checked.indices, Applied(refused=checked.refused)

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
            return self._apply_typed(pd.DataFrame(events, columns=EVENT_FIELDS))

    def _require_started(self) -> None:
        if self.store is None:
            raise RuntimeError("the online store starts with the first model")

    def _apply(self, records: list[Any], log: bool = False) -> Applied:
        checked = validate_events(records, self.airports, self.carriers)
        applied = self._apply_typed(checked.events)
        refused = [(checked.indices[i], name, reason) for i, name, reason in applied.refused]
        if log and self.folder is not None:
            out = [i for i, _, _ in applied.refused]
            accepted = checked.events.drop(index=out)  # duplicates too: harmless
            self._append(LOG, [json.dumps(r) for r in as_records(accepted)])
        return Applied(applied.applied, applied.duplicates, sorted([*checked.refused, *refused]))

    def _apply_typed(self, events: pd.DataFrame) -> Applied:
        assert self.store is not None
        applied = self.store.apply(events)
        if applied.applied:
            self.lookups = self.store.lookups()  # swapped whole: readers never see it change
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
        self, columns: dict[str, np.ndarray], rows: int
    ) -> tuple[np.ndarray, list[tuple[str, ...]]]:
        """Per flight: the time its features knew up to (the scheduled departure or an earlier
        `as_of`, and for a flight the store answers, the store's newest event if earlier
        still), and the sources older than their maximum age then."""
        t = to_minutes(columns["scheduled_departure"])
        known = known_until(columns)
        store = self.store
        if store is None or self.lookups is None:
            return known, [()] * rows
        after = t > self.since
        as_of = np.where(after, np.minimum(known, store.clock), known)
        sources = list(self._max_age)
        newest = np.array([store.newest.get(source, -np.inf) for source in sources])
        old = (as_of[:, None] - newest > self._max_age_array) & after[:, None]
        stale: list[tuple[str, ...]] = [()] * rows
        for i in np.flatnonzero(old.any(axis=1)):
            stale[i] = tuple(source for source, o in zip(sources, old[i], strict=True) if o)
        return as_of, stale

    def features(
        self, columns: dict[str, np.ndarray], rows: int, history: Lookups
    ) -> dict[str, np.ndarray]:
        """The transform, each flight on the lookups that know its time: the store's after
        `since`, the model's own before."""
        live = self.lookups
        if live is None:
            return feature_arrays(columns, history, rows)
        after = to_minutes(columns["scheduled_departure"]) > self.since
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


def _iso(minutes: float) -> str:
    return str(np.datetime64(int(minutes), "m"))
