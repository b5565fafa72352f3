"""Online drift: the PSI of each numerical input, and of the predicted probability, over a
sliding window of served rows.

The training distribution of the inputs is in the feature spec (`psi_edges`, `psi_fractions`,
from the training months); the probability's is the model's on its holdout, in its metadata
(`output_psi`; models trained before it was recorded have no output drift). The batcher copies
each batch's encoded inputs and probabilities into ring buffers of the last `window_rows` rows,
a memcpy per batch; the histograms and the PSI are computed only when `/metrics` is scraped.
"""

from __future__ import annotations

from threading import Lock

import numpy as np

from pipelines.spec import FeatureSpec

EPSILON = 1e-4  # keeps empty bins finite, as most PSI implementations do


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    e = np.clip(expected, EPSILON, None)
    a = np.clip(actual, EPSILON, None)
    return float(np.sum((a - e) * np.log(a / e)))


def psi_against(edges: np.ndarray, expected: np.ndarray, values: np.ndarray) -> float:
    """PSI of `values` binned at `edges` (inner edges, open outer bins) against `expected`."""
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(expected))
    return psi(expected, counts / len(values))


class DriftMonitor:
    def __init__(
        self, spec: FeatureSpec, window_rows: int = 10_000, output: dict | None = None
    ) -> None:
        self.names = [f.name for f in spec.numerical]
        self.edges = [np.asarray(f.psi_edges, dtype="float64") for f in spec.numerical]
        self.expected = [np.asarray(f.psi_fractions, dtype="float64") for f in spec.numerical]
        self.window_rows = window_rows
        self._values = np.empty((window_rows, len(self.names)), dtype="float32")
        self._missing = np.empty((window_rows, len(self.names)), dtype=bool)
        self.output_edges = None if not output else np.asarray(output["edges"], dtype="float64")
        self.output_expected = None if not output else np.asarray(output["fractions"])
        self._outputs = np.empty(window_rows, dtype="float32")
        self._next_output = 0
        self._outputs_filled = 0
        self._next = 0  # where the next row goes
        self._filled = 0
        self._lock = Lock()

    def update(self, numerical: np.ndarray, missing: np.ndarray) -> None:
        """Add one batch of numerical inputs [rows, features]; `missing` marks the values that
        were filled with a default, which training's fractions leave out too."""
        rows = len(numerical)
        if rows >= self.window_rows:
            numerical, missing = numerical[-self.window_rows :], missing[-self.window_rows :]
            rows = self.window_rows
        with self._lock:
            first = min(rows, self.window_rows - self._next)
            self._values[self._next : self._next + first] = numerical[:first]
            self._missing[self._next : self._next + first] = missing[:first]
            rest = rows - first  # wraps around to the start
            self._values[:rest] = numerical[first:]
            self._missing[:rest] = missing[first:]
            self._next = (self._next + rows) % self.window_rows
            self._filled = min(self._filled + rows, self.window_rows)

    @property
    def rows(self) -> int:
        return self._filled

    def report(self) -> dict[str, float]:
        """PSI per feature over the window; features with no served value are left out."""
        with self._lock:
            values = self._values[: self._filled].copy()
            missing = self._missing[: self._filled].copy()
        out = {}
        for j, (name, edges, expected) in enumerate(
            zip(self.names, self.edges, self.expected, strict=True)
        ):
            present = values[~missing[:, j], j]
            if len(present):
                out[name] = psi_against(edges, expected, present)
        return out

    def update_outputs(self, probabilities: np.ndarray) -> None:
        """Add one batch's predicted probabilities (when the model has a reference for them)."""
        if self.output_edges is None:
            return
        probabilities = probabilities[-self.window_rows :]
        rows = len(probabilities)
        with self._lock:
            first = min(rows, self.window_rows - self._next_output)
            self._outputs[self._next_output : self._next_output + first] = probabilities[:first]
            self._outputs[: rows - first] = probabilities[first:]
            self._next_output = (self._next_output + rows) % self.window_rows
            self._outputs_filled = min(self._outputs_filled + rows, self.window_rows)

    def output_psi(self) -> float | None:
        """PSI of the probabilities over the window against the holdout's; None without a
        reference or a served row."""
        if self.output_edges is None or self.output_expected is None:
            return None
        with self._lock:
            outputs = self._outputs[: self._outputs_filled].astype("float64")
        if not len(outputs):
            return None
        return psi_against(self.output_edges, self.output_expected, outputs)
