"""Training's own numeric helpers (the shared metrics are `pipelines.metrics`)."""

from __future__ import annotations

import numpy as np


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-logits))
