"""Permutation importance: how much ROC-AUC each feature is worth to a trained model, whatever
its framework."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipelines.metrics import roc_auc
from pipelines.spec import FeatureSpec

Predict = Callable[[np.ndarray, np.ndarray], np.ndarray]  # codes, values -> probabilities


def permutation_importance(
    predict: Predict,
    categorical: np.ndarray,
    numerical: np.ndarray,
    labels: np.ndarray,
    spec: FeatureSpec,
    seed: int = 0,
    rows: int = 20_000,
) -> dict[str, float]:
    """ROC-AUC drop per feature when its column is shuffled across (a sample of) the rows."""
    generator = np.random.default_rng(seed)
    sample = generator.permutation(len(labels))[:rows]
    categorical, numerical, labels = categorical[sample], numerical[sample], labels[sample]
    base = roc_auc(labels, predict(categorical, numerical))
    shuffle = generator.permutation(len(labels))
    drops: dict[str, float] = {}
    for kind, features in (("categorical", spec.categorical), ("numerical", spec.numerical)):
        for j, feature in enumerate(features):
            codes, values = categorical.copy(), numerical.copy()
            column = codes if kind == "categorical" else values
            column[:, j] = column[shuffle, j]
            drops[feature.name] = base - roc_auc(labels, predict(codes, values))
    return drops
