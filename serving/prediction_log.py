"""The prediction log: every prediction served, written in batches, off the request path, to
the offline store as Parquet (the "inference table" a monitor joins with the outcomes).

One row per flight scored: the request's id (its `X-Request-ID`), when it was served (UTC),
the model and version that scored it, the flight as sent (carrier, flight, origin, dest,
tailnum, scheduled departure), what its features knew (`as_of`, New York local time, and the
`stale` sources), the probability and the decision. The batcher hands each scored batch over
as it is (references, no copy); a thread of its own turns them into a table every `flush_s`
and writes `<folder>/date=YYYY-MM-DD/<worker>-<start>-<n>.parquet` (the serving date, UTC)
atomically: a file is whole or absent, and every worker of every replica writes its own.

What a kill -9 loses: the predictions answered in the last `flush_s` before it (and, when the
kill lands during a write, the batch being written): `tests/serving/test_prediction_log.py`
checks that bound against a real server. A clean stop writes everything. When the disk falls
behind (more than `max_buffered_rows` waiting), new predictions are dropped from the log, never
delayed, and counted (`mlops_prediction_log_rows_total{outcome="dropped"}`); a write that fails
(a full disk) is counted as failed and its rows are lost, logged once per kind of error.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipelines.online import Landed
from pipelines.rules import DELAYED_MIN
from pipelines.storage import write_bytes_atomic, write_parquet_atomic
from serving.config import PredictionLogConfig

if TYPE_CHECKING:
    from serving.runtime import LoadedModel, Scored

logger = logging.getLogger(__name__)

FLIGHT = ["carrier", "flight", "origin", "dest", "tailnum", "scheduled_departure"]
COLUMNS = [
    "request_id",
    "served_at",
    "model",
    "version",
    *FLIGHT,
    "as_of",
    "stale",
    "delay_probability",
    "delayed",
]

MODELS = "_models"  # each version's reference figures, beside the days
OUTCOMES = ["identity", "scheduled_departure", "arrived_at", "arr_delay", "delayed", "received_at"]

OnRows = Callable[[str, int], None]  # outcome (written, dropped, failed), rows
OnTable = Callable[[dict[str, np.ndarray]], None]


@dataclass(frozen=True)
class _Batch:
    request_ids: list[str]  # one per request of the batch
    sizes: list[int]  # its rows
    scored: Scored  # its columns: the flights as scored (arrays: no row dict is held)
    model: LoadedModel
    served_at: float  # time.time()


class PredictionLog:
    def __init__(
        self,
        config: PredictionLogConfig,
        on_rows: OnRows | None = None,
        on_table: OnTable | None = None,
    ) -> None:
        assert config.folder is not None
        self.folder = config.folder
        self.outcomes = config.outcomes or config.folder.parent / "outcomes"
        self.on_table = on_table  # each table of predictions, once built (realized quality)
        self.flush_s = config.flush_s
        self.max_buffered_rows = config.max_buffered_rows
        self.on_rows = on_rows
        self._pending: list[_Batch] = []
        self._landed: list[tuple[list[Landed], float]] = []
        self._buffered = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._files = 0
        self._errors: set[str] = set()
        self._described: set[tuple[str, str]] = set()

    def record(
        self,
        request_ids: list[str],
        sizes: list[int],
        scored: Scored,
        model: LoadedModel,
    ) -> None:
        """A scored batch (on the event loop: no copy, no conversion)."""
        count = len(scored.probabilities)
        with self._lock:
            if self._buffered + count > self.max_buffered_rows:
                dropped = True
            else:
                dropped = False
                self._buffered += count
                self._pending.append(_Batch(request_ids, sizes, scored, model, time.time()))
        if dropped:
            self._count("dropped", count)

    def record_outcomes(self, landed: list[Landed]) -> None:
        """Arrivals the online store applied (the labels), for `outcomes`."""
        if landed:
            with self._lock:
                self._landed.append((landed, time.time()))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread and write what is left (a clean stop loses nothing)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            self.flush()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending, self._buffered = self._pending, [], 0
            landed, self._landed = self._landed, []
        if landed:
            self._write_all(self.outcomes, _outcomes(landed), "outcomes")
        if not pending:
            return
        count = sum(len(batch.scored.probabilities) for batch in pending)
        self._describe(
            {(batch.model.name, str(batch.model.version)): batch.model for batch in pending}
        )
        tables = _tables(pending)
        if self.on_table is not None:
            for _, table in sorted(tables.items()):
                self.on_table(table)
        if self._write_all(self.folder, tables, "prediction log"):
            self._count("written", count)
        else:
            self._count("failed", count)

    def _describe(self, models: dict[tuple[str, str], LoadedModel]) -> None:
        """Once per version: what `mlops monitor` holds its figures against (the holdout's
        figures and its probabilities' PSI bins), `<folder>/_models/<name>/<version>.json`
        (a folder readers of the Parquet files skip)."""
        for (name, version), model in models.items():
            path = self.folder / MODELS / name / f"{version}.json"
            if (name, version) in self._described or path.exists():
                self._described.add((name, version))
                continue
            about = {
                "holdout": model.bundle.holdout,
                "output_psi": model.bundle.metadata.get("output_psi"),
            }
            try:
                write_bytes_atomic(json.dumps(about).encode(), path)
            except OSError as error:  # the disk: the log's own counts say it
                logger.warning("prediction log: %s not written: %s", path, error)
                continue
            self._described.add((name, version))

    def _write_all(self, folder: Path, tables: dict[str, dict[str, np.ndarray]], what: str) -> bool:
        try:
            for day, table in tables.items():
                self._files += 1
                path = folder / f"date={day}" / f"{self._name}-{self._files:06d}.parquet"
                write_parquet_atomic(pd.DataFrame(table), path)
        except Exception as error:  # a full disk, a folder gone: the server serves on
            kind = type(error).__name__
            if kind not in self._errors:
                self._errors.add(kind)
                rows = sum(len(next(iter(t.values()))) for t in tables.values())
                logger.error("%s: %d rows not written: %s", what, rows, error)
            return False
        return True

    def _count(self, outcome: str, rows: int) -> None:
        if self.on_rows is not None:
            self.on_rows(outcome, rows)


def _tables(pending: list[_Batch]) -> dict[str, dict[str, np.ndarray]]:
    """The batches as columns, split by their serving date (UTC)."""
    per_batch = [len(batch.scored.probabilities) for batch in pending]
    ids = np.array([rid for batch in pending for rid in batch.request_ids], dtype=object)
    served = np.repeat([batch.served_at for batch in pending], per_batch)
    table = {
        "request_id": np.repeat(ids, [n for batch in pending for n in batch.sizes]),
        "served_at": (served * 1e6).astype("int64").astype("datetime64[us]"),
        "model": np.repeat(np.array([b.model.name for b in pending], dtype=object), per_batch),
        "version": np.repeat(
            np.array([str(b.model.version) for b in pending], dtype=object), per_batch
        ),
        **{name: np.concatenate([b.scored.columns[name] for b in pending]) for name in FLIGHT},
        "as_of": _minutes(np.concatenate([batch.scored.as_of for batch in pending])),
        "stale": np.array([",".join(s) for b in pending for s in b.scored.stale], dtype=object),
        "delay_probability": np.concatenate([b.scored.probabilities for b in pending]).astype(
            "float64"
        ),
        "delayed": np.concatenate([b.scored.delayed for b in pending]).astype(bool),
    }
    table["scheduled_departure"] = table["scheduled_departure"].astype("datetime64[us]")
    return _by_day(table, "served_at")


def _by_day(table: dict[str, np.ndarray], column: str) -> dict[str, dict[str, np.ndarray]]:
    days = np.datetime_as_string(table[column], unit="D")
    if (days == days[0]).all():
        return {str(days[0]): table}
    return {str(day): {k: v[days == day] for k, v in table.items()} for day in np.unique(days)}


def _outcomes(landed: list[tuple[list[Landed], float]]) -> dict[str, dict[str, np.ndarray]]:
    """The arrivals as a table (`OUTCOMES`), split by the date they were received (UTC)."""
    flights = [flight for batch, _ in landed for flight in batch]
    received = np.repeat([at for _, at in landed], [len(batch) for batch, _ in landed])
    delays = np.array([f.delay for f in flights], dtype="float64")
    table = {
        "identity": np.array([f.identity for f in flights], dtype=object),
        "scheduled_departure": _minutes(np.array([f.scheduled for f in flights])),
        "arrived_at": _minutes(np.array([f.arrived_at for f in flights])),
        "arr_delay": delays,
        "delayed": delays > DELAYED_MIN,
        "received_at": (received * 1e6).astype("int64").astype("datetime64[us]"),
    }
    return _by_day(table, "received_at")


def _minutes(minutes: np.ndarray) -> np.ndarray:
    """Minutes since the epoch on New York's clock -> naive datetimes (NaT where unknown)."""
    minutes = np.asarray(minutes, dtype="float64")
    out = np.full(len(minutes), np.datetime64("NaT"), dtype="datetime64[us]")
    known = np.isfinite(minutes)
    out[known] = minutes[known].astype("int64").astype("datetime64[m]")
    return out
