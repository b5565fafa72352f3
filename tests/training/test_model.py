"""The tabular network: every architecture choice runs; the numeric encodings are right."""

from __future__ import annotations

import pytest
import torch

from pipelines.spec import FeatureSpec
from training.model import Dropout, ModelConfig, PiecewiseLinear, TabularNet
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


@pytest.mark.parametrize("backbone", ["mlp", "resnet"])
def test_the_members_input_scaling_is_folded_into_the_first_layer_exactly(
    spec: FeatureSpec, tables, backbone: str
) -> None:
    """TabM-mini multiplies each member's copy of the input by its signs, then the backbone;
    the model folds the signs into the first layer's weights instead: the same function."""
    data = to_tensors(tables["valid"].head(64), spec, "cpu")
    model = TabularNet(spec, ModelConfig(width=16, backbone=backbone, members=4)).eval()
    captured = {}
    model.backbone[0].register_forward_pre_hook(lambda _, args: captured.setdefault("x", args))
    torch.manual_seed(0)
    model.adapter.data = torch.randn_like(model.adapter)  # not only signs: any scaling
    logits = model(data.categorical, data.numerical)
    assert not captured, "the first layer ran on its own: the signs were not folded in"

    inputs = model.embed(data.categorical, data.numerical)
    copies = (inputs.unsqueeze(1) * model.adapter).flatten(0, 1)  # the paper's formulation
    hidden = model.backbone(copies).unflatten(0, (-1, 4))
    each = (hidden * model.member_head).sum(-1) + model.member_bias
    expected = torch.logsumexp(torch.nn.functional.logsigmoid(each), 1) - torch.logsumexp(
        torch.nn.functional.logsigmoid(-each), 1
    )
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("p", [0.0, 0.1, 0.3])
def test_dropout_drops_its_share_and_keeps_the_expectation(p: float) -> None:
    layer = Dropout(p).train()
    x = torch.ones(1_000, 1_000)
    torch.manual_seed(0)
    out = layer(x)
    dropped = (out == 0).float().mean().item()
    assert dropped == pytest.approx(p, abs=2e-3)
    assert out.mean().item() == pytest.approx(1.0, abs=5e-3)
    assert torch.equal(out, layer(x)) is (p == 0)  # a fresh mask per call
    torch.manual_seed(0)
    assert torch.equal(out, layer(x))  # from torch's seeded generator
    assert torch.equal(layer.eval()(x), x)


def test_dropout_passes_gradients_through_the_kept_values_only() -> None:
    x = torch.randn(64, 32, requires_grad=True)
    out = Dropout(0.5).train()(x)
    out.sum().backward()
    kept = out != 0
    torch.testing.assert_close(x.grad[kept], torch.full_like(x.grad[kept], 2.0))
    assert torch.all(x.grad[~kept] == 0)
