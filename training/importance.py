"""Permutation importance: how much ROC-AUC each feature is worth to the trained model."""

from __future__ import annotations

import torch
from torch import nn

from pipelines.metrics import roc_auc
from pipelines.spec import FeatureSpec
from training.fit import predict_logits
from training.tensors import Tensors


def permutation_importance(
    model: nn.Module, data: Tensors, spec: FeatureSpec, seed: int = 0, rows: int = 20_000
) -> dict[str, float]:
    """ROC-AUC drop per feature when its column is shuffled across (a sample of) the rows."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    sample = torch.randperm(len(data), generator=generator)[:rows].to(data.label.device)
    data = data.take(sample)
    labels = data.label.cpu().numpy()
    base = roc_auc(labels, predict_logits(model, data).cpu().numpy())
    shuffle = torch.randperm(len(data), generator=generator).to(data.label.device)
    drops: dict[str, float] = {}
    for kind, features in (("categorical", spec.categorical), ("numerical", spec.numerical)):
        for j, feature in enumerate(features):
            categorical, numerical = data.categorical.clone(), data.numerical.clone()
            column = categorical if kind == "categorical" else numerical
            column[:, j] = column[shuffle, j]
            permuted = Tensors(categorical, numerical, data.label)
            drops[feature.name] = base - roc_auc(
                labels, predict_logits(model, permuted).cpu().numpy()
            )
    return drops
