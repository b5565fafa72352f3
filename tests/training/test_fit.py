"""The fit loop learns, stops early, ends on its best weights and is reproducible."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from pipelines.metrics import roc_auc as auc
from pipelines.spec import FeatureSpec
from training.fit import (
    FitConfig,
    autocast,
    evaluate_loss,
    fit,
    predict_logits,
    training_precision,
)
from training.model import ModelConfig, TabularNet
from training.tensors import pick_device, to_tensors

SMALL = ModelConfig(width=32, depth=2, numeric_dim=4)


@pytest.mark.parametrize(("members", "precision"), [(1, "fp32"), (4, "fp32"), (4, "bf16")])
def test_it_learns_the_signal_and_keeps_the_best_weights(
    spec: FeatureSpec, tables, members: int, precision: str
) -> None:
    """A single network, and an ensemble whose members each learn on their own loss, in fp32
    and with bf16 autocast (emulated where the CPU has no bf16: slow, still right)."""
    train, valid = (to_tensors(tables[s], spec, "cpu") for s in ("train", "valid"))
    model = TabularNet(spec, replace(SMALL, members=members))
    config = FitConfig(epochs=8, batch_size=256, precision=precision)
    result = fit(model, train, valid, config)
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert evaluate_loss(model, valid) == pytest.approx(result.best_valid_loss, rel=1e-6)
    scores = predict_logits(model, valid).numpy()
    assert auc(tables["valid"]["delayed"].to_numpy(), scores) > 0.8


def test_it_stops_when_validation_stops_improving(spec: FeatureSpec, tables) -> None:
    train = to_tensors(tables["train"], spec, "cpu")
    noise = tables["valid"].assign(delayed=np.random.default_rng(3).integers(0, 2, 2_000))
    valid = to_tensors(noise, spec, "cpu")
    result = fit(TabularNet(spec, SMALL), train, valid, FitConfig(epochs=40, patience=2))
    assert result.stopped_early
    assert len(result.history) == result.best_epoch + 3


def test_the_same_seed_gives_the_same_model(spec: FeatureSpec, tables) -> None:
    train, valid = (to_tensors(tables[s], spec, "cpu") for s in ("train", "valid"))
    states = []
    for _ in range(2):
        torch.manual_seed(0)  # the model's initial weights
        model = TabularNet(spec, SMALL)
        fit(model, train, valid, FitConfig(epochs=2, seed=5))
        states.append(model.state_dict())
    for name, value in states[0].items():
        assert torch.equal(value, states[1][name]), name


def test_the_device_is_cuda_when_present() -> None:
    assert pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_auto_precision_is_bf16_only_where_the_cpu_computes_it() -> None:
    cpu = torch.device("cpu")
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert training_precision(cpu) == ("bf16" if native else "fp32")
    assert training_precision(cpu, "fp32") == "fp32"
    assert training_precision(cpu, "bf16") == "bf16"
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    for precision, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        with autocast(cpu, precision):
            assert torch.nn.functional.linear(x, w).dtype == dtype
