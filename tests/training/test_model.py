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
    config = ModelConfig(numeric_embedding=numeric, backbone=backbone, width=32)
    logits = TabularNet(spec, config).eval()(data.categorical, data.numerical)
    assert logits.shape == (64,)
    assert torch.isfinite(logits).all()


def test_unknown_categories_use_the_oov_row(spec: FeatureSpec, tables) -> None:
    table = tables["valid"].head(2).copy()
    table.loc[0, "carrier"] = "NEVER-SEEN"
    data = to_tensors(table, spec, "cpu")
    assert data.categorical[0, 0] == 0 and data.categorical[1, 0] > 0
    model = TabularNet(spec, ModelConfig(width=16)).eval()
    assert torch.isfinite(model(data.categorical, data.numerical)).all()


def test_piecewise_linear_encoding_fills_bins_in_order() -> None:
    encoding = PiecewiseLinear([[0.0, 1.0, 3.0], [0.0, 10.0]], dim=1)
    fill = encoding.fill(torch.tensor([[2.0, 5.0], [-1.0, 20.0]]))
    assert fill[0, 0].tolist() == [1.0, 0.5]  # 2.0 fills the first bin and half the second
    assert fill[0, 1].tolist() == [0.5, 0.0]  # the second column has one bin, padded
    assert fill[1, 0].tolist() == [0.0, 0.0] and fill[1, 1].tolist() == [1.0, 0.0]


def test_an_ensemble_trains_each_member_and_predicts_their_mean_probability(
    spec: FeatureSpec, tables
) -> None:
    data = to_tensors(tables["valid"].head(64), spec, "cpu")
    model = TabularNet(spec, ModelConfig(width=16, dropout=0.0, members=4))
    each = model.train()(data.categorical, data.numerical)
    assert each.shape == (64, 4)
    assert not torch.allclose(each[:, 0], each[:, 1])  # the members differ from the start
    mean = model.eval()(data.categorical, data.numerical)
    assert mean.shape == (64,)
    expected = torch.sigmoid(each).mean(dim=1)
    torch.testing.assert_close(torch.sigmoid(mean), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("clip", [True, False])
def test_clipping_holds_numerical_values_to_the_training_range(
    spec: FeatureSpec, tables, clip: bool
) -> None:
    """A value past anything training saw is read as the largest one seen, as a tree reads it."""
    data = to_tensors(tables["valid"].head(8), spec, "cpu")
    j = [f.name for f in spec.numerical].index("month")
    at_max, beyond = data.numerical.clone(), data.numerical.clone()
    at_max[:, j], beyond[:, j] = spec.numerical[j].max, spec.numerical[j].max + 3
    model = TabularNet(spec, ModelConfig(width=16, clip_to_training=clip)).eval()
    same = torch.equal(model(data.categorical, at_max), model(data.categorical, beyond))
    assert same is clip
