"""The tabular network: every architecture choice runs; the numeric encodings are right."""

from __future__ import annotations

import pytest
import torch

from pipelines.spec import FeatureSpec
from training.model import ModelConfig, PiecewiseLinear, TabularNet
from training.tensors import to_tensors


@pytest.mark.parametrize("numeric", ["none", "ple", "periodic"])
@pytest.mark.parametrize("backbone", ["mlp", "resnet"])
def test_every_architecture_gives_one_finite_logit_per_row(
    spec: FeatureSpec, tables, numeric: str, backbone: str
) -> None:
    data = to_tensors(tables["valid"].head(64), spec, "cpu")
    model = TabularNet(spec, ModelConfig(numeric_embedding=numeric, backbone=backbone, width=32))
    logits = model(data.categorical, data.numerical)
    assert logits.shape == (64,)
    assert torch.isfinite(logits).all()


def test_unknown_categories_use_the_oov_row(spec: FeatureSpec, tables) -> None:
    table = tables["valid"].head(2).copy()
    table.loc[0, "carrier"] = "NEVER-SEEN"
    data = to_tensors(table, spec, "cpu")
    assert data.categorical[0, 0] == 0 and data.categorical[1, 0] > 0
    model = TabularNet(spec, ModelConfig(width=16))
    assert torch.isfinite(model(data.categorical, data.numerical)).all()


def test_piecewise_linear_encoding_fills_bins_in_order() -> None:
    encoding = PiecewiseLinear([[0.0, 1.0, 3.0], [0.0, 10.0]], dim=1)
    fill = encoding.fill(torch.tensor([[2.0, 5.0], [-1.0, 20.0]]))
    assert fill[0, 0].tolist() == [1.0, 0.5]  # 2.0 fills the first bin and half the second
    assert fill[0, 1].tolist() == [0.5, 0.0]  # the second column has one bin, padded
    assert fill[1, 0].tolist() == [0.0, 0.0] and fill[1, 1].tolist() == [1.0, 0.0]
