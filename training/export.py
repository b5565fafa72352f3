"""ONNX export with a parity check against torch.

The exported graph takes the encoded inputs (category codes, raw numerical values) and returns
the delay probability; normalization and the numerical embeddings are inside it. It is exported
with a batch of 2 and a dynamic batch axis (a batch of 1 would freeze the axis), saved as one
file, and must match torch in fp32 within `atol` at every batch size checked, or the export
fails and nothing downstream registers it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from pipelines.contract import INPUTS, OUTPUT, PARITY_ATOL, session_options
from pipelines.errors import ModelRefusedError
from training.tensors import Tensors

logger = logging.getLogger(__name__)

PARITY_BATCHES = (1, 7, 4096)


class ParityError(ModelRefusedError):
    """The ONNX model does not reproduce torch's outputs."""


class WithProbability(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, categorical: torch.Tensor, numerical: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(categorical, numerical))


@dataclass(frozen=True)
class ParityReport:
    rows: int
    max_abs_diff: dict[int, float]  # per batch size
    atol: float


def export_onnx(model: nn.Module, sample: Tensors, path: Path) -> Path:
    """Write the model (CPU, fp32, eval mode) as a single ONNX file with a dynamic batch axis."""
    wrapped = WithProbability(model).cpu().float().eval()
    example = (sample.categorical[:2].cpu(), sample.numerical[:2].cpu())
    batch = torch.export.Dim("batch", min=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    program = torch.onnx.export(
        wrapped,
        example,
        input_names=list(INPUTS),
        output_names=[OUTPUT],
        # The model ties the two batch axes together, so the exporter finds them one symbol:
        # named once (naming both `batch` has torch warn that the second name goes unused)
        dynamic_shapes={"categorical": {0: batch}, "numerical": {0: torch.export.Dim.AUTO}},
        dynamo=True,
        external_data=False,
        optimize=True,
        verbose=False,
    )
    program.save(str(path), external_data=False)
    onnx.checker.check_model(onnx.load(str(path)))
    return path


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


@torch.no_grad()
def check_parity(
    model: nn.Module,
    path: Path,
    data: Tensors,
    batch_sizes: tuple[int, ...] = PARITY_BATCHES,
    atol: float = PARITY_ATOL,
) -> ParityReport:
    """ONNX Runtime against torch (fp32, CPU) on every row of `data`, at each batch size."""
    wrapped = WithProbability(model).cpu().float().eval()
    categorical, numerical = data.categorical.cpu(), data.numerical.cpu()
    expected = torch.cat(
        [
            wrapped(categorical[i : i + 65_536], numerical[i : i + 65_536])
            for i in range(0, len(data), 65_536)
        ]
    ).numpy()
    runtime = session(path)
    worst: dict[int, float] = {}
    for size in batch_sizes:
        got = predict_onnx(runtime, categorical.numpy(), numerical.numpy(), size)
        worst[size] = float(np.max(np.abs(got - expected))) if len(got) else 0.0
    report = ParityReport(len(data), worst, atol)
    failed = {size: diff for size, diff in worst.items() if not diff <= atol}
    if failed:
        raise ParityError(f"ONNX differs from torch by more than {atol}: {failed}")
    logger.info("ONNX parity on %d rows: %s", len(data), worst)
    return report
