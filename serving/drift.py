"""Online drift: the PSI of each numerical input over a sliding window of served rows.

The training distribution is in the feature spec (`psi_edges`, `psi_fractions`, from the
training months). The batcher adds each batch's bin counts, so the cost is one searchsorted
and one bincount per feature per batch, not per request; PSI is computed when scraped.
"""

from __future__ import annotations

from collections import deque
from threading import Lock

import numpy as np

from pipelines.spec import FeatureSpec

EPSILON = 1e-4  # keeps empty bins finite, as most PSI implementations do


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    e = np.clip(expected, EPSILON, None)
    a = np.clip(actual, EPSILON, None)
    return float(np.sum((a - e) * np.log(a / e)))


class DriftMonitor:
    def __init__(self, spec: FeatureSpec, window_rows: int = 10_000) -> None:
        self.names = [f.name for f in spec.numerical]
        self.edges = [np.asarray(f.psi_edges, dtype="float64") for f in spec.numerical]
        self.expected = [np.asarray(f.psi_fractions, dtype="float64") for f in spec.numerical]
        self.window_rows = window_rows
        self._batches: deque[tuple[int, list[np.ndarray]]] = deque()
        self._totals = [np.zeros(len(e), dtype="int64") for e in self.expected]
        self._rows = 0
        self._lock = Lock()

    def update(self, numerical: np.ndarray, missing: np.ndarray) -> None:
        """Add one batch of numerical inputs [rows, features]; `missing` marks the values that
        were filled with a default, which training's fractions leave out too."""
        rows = len(numerical)
        if not rows:
            return
        counts = [
            np.bincount(
                np.searchsorted(edges, numerical[~missing[:, j], j], side="right"),
                minlength=len(exp),
            )
            for j, (edges, exp) in enumerate(zip(self.edges, self.expected, strict=True))
        ]
        with self._lock:
            self._batches.append((rows, counts))
            self._rows += rows
            for total, count in zip(self._totals, counts, strict=True):
                total += count
            while self._batches and self._rows - self._batches[0][0] >= self.window_rows:
                old_rows, old_counts = self._batches.popleft()
                self._rows -= old_rows
                for total, count in zip(self._totals, old_counts, strict=True):
                    total -= count

    @property
    def rows(self) -> int:
        return self._rows

    def report(self) -> dict[str, float]:
        """PSI per feature over the window; empty before any row was served."""
        with self._lock:
            if not self._rows:
                return {}
            return {
                name: psi(expected, total / total.sum())
                for name, expected, total in zip(
                    self.names, self.expected, self._totals, strict=True
                )
                if total.sum()
            }
