"""What every framework's model must be to leave training: an ONNX file on the contract, whose
outputs match the framework's own.

A candidate (`Candidate`) is a fitted model of any framework that can give its own delay
probabilities for the encoded inputs (category codes, raw numerical values) and write itself
as one ONNX file with the contract's signature (`pipelines.contract`): `categorical` int64 and
`numerical` float32 in, `delay_probability` float32 [batch] out, a dynamic batch axis. The file
must match the framework within `atol` at every batch size checked, or the export fails and
nothing downstream registers it. The PyTorch network is `training.network`, LightGBM
`training.gbdt`; the gate and the server only ever see the file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from pipelines.contract import INPUTS, OUTPUT, PARITY_ATOL, session_options
from pipelines.errors import ModelRefusedError

__all__ = ["INPUTS", "OUTPUT"]

logger = logging.getLogger(__name__)

PARITY_BATCHES = (1, 7, 4096)
# the most calls each batch size makes, on rows spread evenly over the data: batch 1 scores
# 4,096 rows, not every row one call each (6 of a run's seconds on 54,000 rows), 7 at most
# 28,672, 4,096 every row of any holdout up to 16 million
PARITY_CALLS = 4096


class ParityError(ModelRefusedError):
    """The ONNX model does not reproduce its framework's outputs."""


class Candidate(Protocol):
    """A fitted model of some framework, as training exports and logs it."""

    framework: str  # "torch", "lightgbm": a run's `framework` tag and the gate's wording

    def predict(self, categorical: np.ndarray, numerical: np.ndarray) -> np.ndarray:
        """The framework's own delay probabilities (float32 [rows]), on the CPU."""
        ...

    def export_onnx(self, categorical: np.ndarray, numerical: np.ndarray, path: Path) -> Path:
        """Write the model as one ONNX file on the contract; the inputs are a sample."""
        ...


@dataclass(frozen=True)
class ParityReport:
    rows: dict[int, int]  # rows compared, per batch size
    max_abs_diff: dict[int, float]  # per batch size
    atol: float


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU session configured as the server's (`pipelines.contract`): what the gate scores."""
    return ort.InferenceSession(
        str(path), session_options(threads), providers=["CPUExecutionProvider"]
    )


def predict_onnx(
    runtime: ort.InferenceSession,
    categorical: np.ndarray,
    numerical: np.ndarray,
    batch_size: int = 65_536,
) -> np.ndarray:
    """Delay probabilities from an exported model, `batch_size` rows per call."""
    parts = [
        runtime.run(
            [OUTPUT],
            {
                "categorical": categorical[i : i + batch_size],
                "numerical": numerical[i : i + batch_size],
            },
        )[0]
        for i in range(0, len(categorical), batch_size)
    ]
    return np.concatenate(parts) if parts else np.empty(0, dtype="float32")


def check_parity(
    candidate: Candidate,
    path: Path,
    categorical: np.ndarray,
    numerical: np.ndarray,
    batch_sizes: tuple[int, ...] = PARITY_BATCHES,
    atol: float = PARITY_ATOL,
    calls: int = PARITY_CALLS,
) -> ParityReport:
    """ONNX Runtime against the framework at each batch size: on every row given, or on rows
    spread evenly over them where that would take more than `calls` calls."""
    expected = candidate.predict(categorical, numerical)
    runtime = session(path)
    worst: dict[int, float] = {}
    rows: dict[int, int] = {}
    for size in batch_sizes:
        count = min(len(categorical), size * calls)
        picked = np.round(np.linspace(0, len(categorical) - 1, count)).astype(np.int64)
        got = predict_onnx(runtime, categorical[picked], numerical[picked], size)
        rows[size] = len(got)
        worst[size] = float(np.max(np.abs(got - expected[picked]))) if len(got) else 0.0
    report = ParityReport(rows, worst, atol)
    failed = {size: diff for size, diff in worst.items() if not diff <= atol}
    if failed:
        raise ParityError(f"ONNX differs from {candidate.framework} by more than {atol}: {failed}")
    logger.info("ONNX parity (rows per batch size %s): %s", rows, worst)
    return report
