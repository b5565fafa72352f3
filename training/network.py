"""The PyTorch network as a candidate (`training.export.Candidate`): its probabilities and its
ONNX export.

The exported graph takes the encoded inputs and returns the delay probability; normalization
and the numerical embeddings are inside it. It is exported with a batch of 2 and a dynamic
batch axis (a batch of 1 would freeze the axis), saved as one file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from pipelines.contract import INPUTS, OUTPUT
from training.fit import predict_logits
from training.tensors import Tensors


class WithProbability(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, categorical: torch.Tensor, numerical: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(categorical, numerical))


class Network:
    """A fitted network, scored on the CPU in fp32 as its export is."""

    framework = "torch"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @torch.no_grad()
    def predict(self, categorical: np.ndarray, numerical: np.ndarray) -> np.ndarray:
        data = _inputs(categorical, numerical)
        return torch.sigmoid(predict_logits(self.model.cpu().float(), data)).numpy()

    def export_onnx(self, categorical: np.ndarray, numerical: np.ndarray, path: Path) -> Path:
        return export_onnx(self.model, _inputs(categorical, numerical), path)


def _inputs(categorical: np.ndarray, numerical: np.ndarray) -> Tensors:
    label = torch.zeros(len(categorical))  # predict_logits reads the device off the label
    return Tensors(torch.from_numpy(categorical), torch.from_numpy(numerical), label)


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
