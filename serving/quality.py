"""Realized quality: the predictions served, joined with their flights' arrivals as the arrival
events come in, per model version, over sliding windows of event time.

A flight's label (an arrival more than `DELAYED_MIN` late) is known when its arrival event is
applied (`pipelines.online.Landed`). What matures is, per model version and flight, the last
prediction that version served for it (the newest `served_at`): a flight asked a thousand
times counts once, and a prediction served after the arrival still counts, as it would in the
prediction log. The windows end at the newest arrival applied (event time, so a replay of
2013 measures 2013) and hold the predictions whose flight landed within them.

The predictions come from the prediction log's tables as they are written (`PredictionLog`'s
`on_table`), off the request path; `mlops monitor` computes the same figures offline from the
log and the outcomes it writes (`tests/serving/test_quality.py` checks they agree).

Bounded: the labels and matured predictions outside the longest window are dropped, and so
are the predictions of flights scheduled before it (they can no longer land inside it); past
`max_flights` predictions waiting for a label the oldest are dropped and counted (a client
asking for flights that never fly).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from pipelines.events import flight_identity, to_minutes
from pipelines.metrics import log_loss, roc_auc
from pipelines.online import Landed
from pipelines.rules import DELAYED_MIN

Key = tuple[str, float]  # the flight: `identity_of`, scheduled departure (New York minutes)
PRUNE_EVERY_MIN = 60.0  # of event time


@dataclass(frozen=True)
class Realized:
    """One version's matured predictions in one window."""

    version: str
    window: str  # "24h"
    predictions: int
    roc_auc: float  # NaN with one class only
    log_loss: float
    mean_probability: float  # calibration: against the observed rate
    delay_rate: float


def window_name(hours: float) -> str:
    return f"{hours:g}h"


def summarize(
    version: str, window: str, probabilities: np.ndarray, delayed: np.ndarray
) -> Realized:
    """The figures of one window's matured predictions (also `mlops monitor`'s)."""
    count = len(probabilities)
    if not count:
        nan = math.nan
        return Realized(version, window, 0, nan, nan, nan, nan)
    y = delayed.astype("float64")
    p = probabilities.astype("float64")
    return Realized(
        version,
        window,
        count,
        roc_auc(y, p),
        log_loss(y, p),
        float(p.mean()),
        float(y.mean()),
    )


Joinable = tuple[list[str], list[float], list[str], list[float], list[float]]


def joinable(table: dict[str, np.ndarray]) -> Joinable:
    """What the join reads of a prediction log table, as plain lists (what a worker shares
    with the others through the stream): each flight's identity and scheduled departure (New
    York minutes), the version, when it was served (seconds since the epoch, UTC), the
    probability."""
    served = table["served_at"].astype("datetime64[us]").astype("int64") / 1e6
    return (
        flight_identity(table["carrier"], table["flight"], table["origin"]).tolist(),
        to_minutes(table["scheduled_departure"]).tolist(),
        [str(v) for v in table["version"].tolist()],
        served.tolist(),
        table["delay_probability"].astype("float64").tolist(),
    )


class RealizedQuality:
    def __init__(self, windows_h: Sequence[float] = (24.0, 168.0), max_flights: int = 200_000):
        self.windows = sorted(float(h) for h in windows_h)
        self.longest_min = self.windows[-1] * 60
        self.max_flights = max_flights
        # flights not landed yet: version -> (served_at, probability), the newest per version
        self._waiting: dict[Key, dict[str, tuple[float, float]]] = {}
        self._labels: dict[Key, tuple[float, bool]] = {}  # landed: arrived_at, delayed
        # version -> flight -> (served_at, probability, arrived_at, delayed)
        self._matured: dict[str, dict[Key, tuple[float, float, float, bool]]] = {}
        self.newest = -math.inf  # the newest arrival applied (New York minutes)
        self.matured_total: dict[str, int] = {}  # per version, every flight that matured
        self.evicted = 0  # predictions dropped waiting for a label (past max_flights)
        self._pruned_at = -math.inf
        self._changes = 0
        self._cached: tuple[int, list[Realized]] | None = None
        self._lock = threading.Lock()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def predictions(self, table: dict[str, np.ndarray]) -> None:
        """A table of the prediction log (`serving.prediction_log.COLUMNS`)."""
        self.add(*joinable(table))

    def add(
        self,
        identities: Sequence[str],
        scheduled: Sequence[float],
        versions: Sequence[str],
        served_at: Sequence[float],
        probabilities: Sequence[float],
    ) -> None:
        """Predictions (`joinable`'s columns): each version's newest one per flight is kept."""
        with self._lock:
            for identity, when, version, served, probability in zip(
                identities, scheduled, versions, served_at, probabilities, strict=True
            ):
                key = (identity, when)
                label = self._labels.get(key)
                if label is not None:
                    self._mature(version, key, served, probability, *label)
                    continue
                held = self._waiting.get(key)
                if held is None:
                    held = self._waiting[key] = {}
                newer = held.get(version)
                if newer is None or served >= newer[0]:
                    held[version] = (served, probability)
            while len(self._waiting) > self.max_flights:  # the oldest asked first
                self._waiting.pop(next(iter(self._waiting)))
                self.evicted += 1

    def landed(self, landed: Iterable[Landed]) -> None:
        """Arrivals applied by the online store (every one, whether predicted or not)."""
        with self._lock:
            for flight in landed:
                key = (flight.identity, flight.scheduled)
                delayed = flight.delay > DELAYED_MIN
                self._labels[key] = (flight.arrived_at, delayed)
                self.newest = max(self.newest, flight.arrived_at)
                self._changes += 1
                for version, (served, probability) in self._waiting.pop(key, {}).items():
                    self._mature(version, key, served, probability, flight.arrived_at, delayed)
            if self.newest - self._pruned_at >= PRUNE_EVERY_MIN:
                self._prune()

    def _mature(
        self,
        version: str,
        key: Key,
        served: float,
        probability: float,
        arrived_at: float,
        delayed: bool,
    ) -> None:
        matured = self._matured.setdefault(version, {})
        held = matured.get(key)
        if held is None:
            self.matured_total[version] = self.matured_total.get(version, 0) + 1
        elif served < held[0]:
            return  # an older prediction than the one held
        matured[key] = (served, probability, arrived_at, delayed)
        self._changes += 1

    def _prune(self) -> None:
        horizon = self.newest - self.longest_min
        self._labels = {k: v for k, v in self._labels.items() if v[0] > horizon}
        for version, matured in self._matured.items():
            self._matured[version] = {k: v for k, v in matured.items() if v[2] > horizon}
        self._waiting = {k: v for k, v in self._waiting.items() if k[1] > horizon}
        self._pruned_at = self.newest

    def report(self) -> list[Realized]:
        """Every version's figures in every window (computed when asked, kept until the next
        change)."""
        with self._lock:
            if self._cached is not None and self._cached[0] == self._changes:
                return self._cached[1]
            held = {
                version: np.array([(v[1], v[2], v[3]) for v in matured.values()], dtype="float64")
                for version, matured in self._matured.items()
            }
            changes, newest = self._changes, self.newest
        out = []
        for version, values in sorted(held.items()):
            values = values.reshape(-1, 3)
            for hours in self.windows:
                inside = values[:, 1] > newest - hours * 60
                out.append(
                    summarize(
                        version,
                        window_name(hours),
                        values[inside, 0],
                        values[inside, 2].astype(bool),
                    )
                )
        with self._lock:
            self._cached = (changes, out)
        return out
