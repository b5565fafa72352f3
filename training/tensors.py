"""The feature table as tensors that live on the training device.

The whole table fits in device memory (27 MB per million rows), so batches are slices of a
random permutation: no per-sample Dataset/DataLoader, no host-to-device copy per step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from pipelines.spec import LABEL, Encoded, FeatureSpec, encode


@dataclass(frozen=True)
class Tensors:
    categorical: torch.Tensor  # int64 [rows, categorical features]
    numerical: torch.Tensor  # float32 [rows, numerical features], raw values, defaults filled
    label: torch.Tensor  # float32 [rows]

    def __len__(self) -> int:
        return len(self.label)

    def take(self, index: torch.Tensor) -> Tensors:
        return Tensors(self.categorical[index], self.numerical[index], self.label[index])

    def to(self, device: torch.device | str) -> Tensors:
        return Tensors(
            self.categorical.to(device), self.numerical.to(device), self.label.to(device)
        )


def pick_device() -> torch.device:
    """CUDA when present (this process's GPU under torchrun), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def to_tensors(table: pd.DataFrame, spec: FeatureSpec, device: torch.device | str) -> Tensors:
    """Encode with the spec (vocabularies, defaults) exactly as serving will."""
    return tensors_of(encode(table, spec), table[LABEL].to_numpy(), device)


def tensors_of(encoded: Encoded, labels: np.ndarray, device: torch.device | str) -> Tensors:
    """Encoded inputs and their labels on `device` (on the CPU, sharing the arrays' memory)."""
    return Tensors(
        torch.from_numpy(encoded.categorical),
        torch.from_numpy(encoded.numerical),
        torch.from_numpy(labels.astype("float32")),
    ).to(device)
