"""The network in TensorFlow as a fourth framework: the PyTorch network's architecture, the same
encoded inputs, ONNX contract and parity check."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import onnx
import pandas as pd
import pytest
from mlflow import MlflowClient

pytest.importorskip("tf2onnx", reason="the `tf` extra: pip install -e '.[tf]'")

import tensorflow as tf

from pipelines.layout import DataLayout
from pipelines.metrics import log_loss
from pipelines.spec import FeatureSpec, part_of
from pipelines.storage import read_parquet_folder
from training.config import FitConfig, GateConfig, ModelConfig, TrackingConfig
from training.export import INPUTS, OUTPUT, ParityError, check_parity
from training.model import TabularNet
from training.registry import download_model, promote
from training.tf_network import TfNetwork, fit_tf, fresh_tf_model
from training.train import train, train_tf

SMALL = ModelConfig(width=16, depth=1, numeric_dim=2, members=1)
FIT = FitConfig(epochs=2, batch_size=512)

ARCHITECTURES = [
    pytest.param(SMALL, id="mlp-periodic"),
    pytest.param(replace(SMALL, numeric_embedding="ple", members=4), id="mlp-ple-ensemble"),
    pytest.param(
        replace(SMALL, backbone="resnet", numeric_embedding="none", depth=2), id="resnet-none"
    ),
    pytest.param(replace(SMALL, clip_to_training=False, members=3), id="unclipped-ensemble"),
]


def trainable(model: tf.Module) -> int:
    return sum(v.shape.num_elements() for v in model.trainable_variables)


@pytest.mark.parametrize("config", ARCHITECTURES)
def test_the_same_architecture_as_the_pytorch_network(spec: FeatureSpec, config: ModelConfig):
    """One configuration, one network: as many trainable parameters in either framework."""
    ours = trainable(fresh_tf_model(spec, config, 0))
    theirs = sum(p.numel() for p in TabularNet(spec, config).parameters())
    assert ours == theirs


def test_linear_layers_start_as_pytorchs(spec: FeatureSpec) -> None:
    """Uniform in ±1/sqrt(fan_in), weight and bias: a configuration tuned on one network is a
    fair start for the other."""
    model = fresh_tf_model(spec, replace(SMALL, width=512, depth=2), 0)
    kernel, bias = model.layers[0].kernel.numpy(), model.layers[0].bias.numpy()
    bound = 1 / np.sqrt(512)
    assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound
    assert kernel.var() == pytest.approx(bound**2 / 3, rel=0.02)
    codes = np.concatenate([e.numpy().ravel() for e in model.embeddings])  # N(0, 1), as torch's
    assert codes.std() == pytest.approx(1, rel=0.25)


@pytest.mark.parametrize("config", ARCHITECTURES)
def test_the_export_matches_tf_at_every_batch_size(
    config: ModelConfig, tables: dict[str, pd.DataFrame], spec: FeatureSpec, tmp_path: Path
) -> None:
    train, valid = part_of(tables["train"], spec), part_of(tables["valid"], spec)
    network, fitted = fit_tf(spec, config, train, valid, FIT)
    assert 0 <= fitted.best_epoch < FIT.epochs
    path = network.export_onnx(valid[0][:8], valid[1][:8], tmp_path / "model.onnx")
    report = check_parity(network, path, valid[0], valid[1])
    assert set(report.max_abs_diff) == {1, 7, 4096}
    assert max(report.max_abs_diff.values()) <= 1e-5
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == list(INPUTS)
    assert [o.name for o in graph.output] == [OUTPUT]
    types = [i.type.tensor_type.elem_type for i in [*graph.input, *graph.output]]
    assert types == [onnx.TensorProto.INT64, onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT]
    assert len(graph.output[0].type.tensor_type.shape.dim) == 1  # [batch]
    for tensor in [*graph.input, *graph.output]:
        batch = tensor.type.tensor_type.shape.dim[0]
        assert batch.dim_param and not batch.HasField("dim_value")


def test_an_ensemble_predicts_its_members_mean_probability(
    tables: dict[str, pd.DataFrame], spec: FeatureSpec
) -> None:
    model = fresh_tf_model(spec, replace(SMALL, members=4, dropout=0.0), 0)
    codes, values, _ = part_of(tables["valid"].head(50), spec)
    members = tf.sigmoid(model(codes, values, training=True)).numpy()
    assert members.shape == (50, 4)
    got = TfNetwork(model, codes.shape[1], values.shape[1]).predict(codes, values)
    np.testing.assert_allclose(got, members.mean(axis=1), rtol=1e-5, atol=1e-6)


def test_the_fit_is_seeded_and_keeps_the_best_epoch(
    tables: dict[str, pd.DataFrame], spec: FeatureSpec
) -> None:
    train, valid = part_of(tables["train"], spec), part_of(tables["valid"], spec)
    seeded = replace(SMALL, members=2)  # dropout's masks drawn too
    # a step large enough that the validation loss turns up before the last epoch
    overshoots = replace(FIT, epochs=5, learning_rate=0.03, patience=1)
    once, fitted = fit_tf(spec, seeded, train, valid, overshoots)
    again, refitted = fit_tf(spec, seeded, train, valid, overshoots)
    assert [(e.train_loss, e.valid_loss) for e in refitted.history] == [
        (e.train_loss, e.valid_loss) for e in fitted.history
    ]
    codes, values, labels = valid
    np.testing.assert_array_equal(once.predict(codes, values), again.predict(codes, values))
    other, _ = fit_tf(spec, seeded, train, valid, replace(overshoots, seed=1))
    assert not np.array_equal(once.predict(codes, values), other.predict(codes, values))
    losses = [e.valid_loss for e in fitted.history]
    assert fitted.best_valid_loss == min(losses) == losses[fitted.best_epoch]
    assert fitted.best_epoch < len(losses) - 1 and fitted.stopped_early
    probabilities = once.predict(codes, values)  # the restored weights: the best loss again
    assert log_loss(labels, probabilities) == pytest.approx(fitted.best_valid_loss, rel=1e-4)


def test_a_tf_network_that_drifted_from_its_export_fails_parity(
    tables: dict[str, pd.DataFrame], spec: FeatureSpec, tmp_path: Path
) -> None:
    network = TfNetwork(fresh_tf_model(spec, SMALL, 0), len(spec.categorical), len(spec.numerical))
    codes, values, _ = part_of(tables["valid"].head(500), spec)
    path = network.export_onnx(codes[:8], values[:8], tmp_path / "model.onnx")
    check_parity(network, path, codes, values)
    network.model.head.bias.assign_add([1e-3])  # after the export: the file has the old weights
    with pytest.raises(ParityError, match="differs from tf"):
        check_parity(network, path, codes, values)


@pytest.mark.slow  # as JAX's: the network's tracked run is in the fast suite
def test_a_tf_run_is_tracked_logged_and_gated_like_the_others(
    featured_home: Path, tmp_path: Path
) -> None:
    """On the real feature table: the run as MLflow shows it (the same validation rows, model
    card and contract as every framework's), then the gate against a PyTorch network."""
    layout = DataLayout(featured_home)
    tracking = TrackingConfig(featured_home, experiment="tf")
    result = train_tf(layout, tracking, SMALL, replace(FIT, epochs=1, batch_size=4096))
    client = MlflowClient(tracking.resolved_uri)
    run = client.get_run(result.run_id)
    assert result.framework == "tf"
    assert run.data.tags["framework"] == run.data.params["framework"] == "tf"
    assert run.data.params["device"] == "cpu" and run.data.params["validation"] == "random"
    assert run.info.run_name.endswith(" tf mlp+periodic")
    assert run.data.metrics["test_roc_auc"] > 0.65
    for size in (1, 7, 4096):
        assert run.data.metrics[f"onnx_parity_max_abs_diff_b{size}"] <= 1e-5
    card = run.data.tags["mlflow.note.content"]
    assert card.startswith("tf mlp+periodic trained on 2013-01..2013-10")
    assert "max |ONNX - tf|" in card
    model_dir = download_model(client, result.run_id, tmp_path / "model")
    assert mlflow.models.Model.load(str(model_dir / "MLmodel")).metadata["framework"] == "tf"
    assert not mlflow.is_tracking_uri_set()

    gate = GateConfig(model_name="flight-delay-tf")
    holdout = read_parquet_folder(layout.split("test"))
    first = promote(client, result.run_id, holdout, gate)
    assert first.promoted and first.challenger_framework == "tf"
    network = train(layout, tracking, SMALL, replace(FIT, epochs=1, batch_size=4096))
    second = promote(client, network.run_id, holdout, gate)
    assert (second.challenger_framework, second.champion_framework) == ("torch", "tf")
    assert second.promoted == (second.challenger_auc > second.champion_auc)
