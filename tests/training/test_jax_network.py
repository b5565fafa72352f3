"""The network in JAX as a third framework: the PyTorch network's architecture, the same
encoded inputs, ONNX contract and parity check, the same tracked run, study and gate."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import onnx
import pandas as pd
import pytest
from mlflow import MlflowClient

pytest.importorskip("jax2onnx", reason="the `jax` extra: pip install -e '.[jax]'")

import jax
from flax import nnx

from pipelines.layout import DataLayout
from pipelines.metrics import log_loss
from pipelines.spec import FeatureSpec, part_of
from pipelines.storage import read_parquet_folder
from tests.training.conftest import assert_a_drifted_export_logs_nothing
from training.config import FitConfig, GateConfig, ModelConfig, TrackingConfig
from training.export import INPUTS, OUTPUT, check_parity
from training.jax_network import JaxNetwork, fit_jax, fresh_jax_model
from training.model import TabularNet
from training.registry import download_model, promote
from training.train import train_jax, train_trees

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


def trainable(model: nnx.Module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("config", ARCHITECTURES)
def test_the_same_architecture_as_the_pytorch_network(spec: FeatureSpec, config: ModelConfig):
    """One configuration, one network: as many trainable parameters in either framework."""
    ours = trainable(fresh_jax_model(spec, config, 0))
    theirs = sum(p.numel() for p in TabularNet(spec, config).parameters())
    assert ours == theirs


@pytest.mark.parametrize("config", ARCHITECTURES)
def test_the_export_matches_jax_at_every_batch_size(
    config: ModelConfig, tables: dict[str, pd.DataFrame], spec: FeatureSpec, tmp_path: Path
) -> None:
    train, valid = part_of(tables["train"], spec), part_of(tables["valid"], spec)
    network, fitted = fit_jax(spec, config, train, valid, FIT)
    assert 0 <= fitted.best_epoch < FIT.epochs
    path = network.export_onnx(valid[0][:8], valid[1][:8], tmp_path / "model.onnx")
    report = check_parity(network, path, valid[0], valid[1])
    assert set(report.max_abs_diff) == {1, 7, 4096}
    assert max(report.max_abs_diff.values()) <= 1e-5
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == list(INPUTS)
    assert [o.name for o in graph.output] == [OUTPUT]
    types = [i.type.tensor_type.elem_type for i in graph.input]
    assert types == [onnx.TensorProto.INT64, onnx.TensorProto.FLOAT]
    for tensor in [*graph.input, *graph.output]:
        batch = tensor.type.tensor_type.shape.dim[0]
        assert batch.dim_param and not batch.HasField("dim_value")


def test_an_ensemble_predicts_its_members_mean_probability(
    tables: dict[str, pd.DataFrame], spec: FeatureSpec
) -> None:
    model = fresh_jax_model(spec, replace(SMALL, members=4, dropout=0.0), 0)
    codes, values, _ = part_of(tables["valid"].head(50), spec)
    codes = codes.astype("int32")
    model.train()
    members = np.asarray(jax.nn.sigmoid(model(codes, values)))
    assert members.shape == (50, 4)
    got = JaxNetwork(model).predict(codes, values)
    np.testing.assert_allclose(got, members.mean(axis=1), rtol=1e-5, atol=1e-6)


def test_the_fit_is_seeded_and_keeps_the_best_epoch(
    tables: dict[str, pd.DataFrame], spec: FeatureSpec
) -> None:
    train, valid = part_of(tables["train"], spec), part_of(tables["valid"], spec)
    once, fitted = fit_jax(spec, SMALL, train, valid, replace(FIT, epochs=3))
    again, _ = fit_jax(spec, SMALL, train, valid, replace(FIT, epochs=3))
    codes, values, labels = valid
    np.testing.assert_array_equal(once.predict(codes, values), again.predict(codes, values))
    other, _ = fit_jax(spec, SMALL, train, valid, replace(FIT, epochs=3, seed=1))
    assert not np.array_equal(once.predict(codes, values), other.predict(codes, values))
    losses = [e.valid_loss for e in fitted.history]
    assert fitted.best_valid_loss == min(losses) == losses[fitted.best_epoch]
    probabilities = once.predict(codes, values)  # the restored weights: the best loss again
    assert log_loss(labels, probabilities) == pytest.approx(fitted.best_valid_loss, rel=1e-4)


def test_a_jax_network_that_drifted_from_its_export_fails_parity_and_logs_nothing(
    featured_home: Path,
) -> None:
    real = FeatureSpec.load(DataLayout(featured_home).spec)
    assert_a_drifted_export_logs_nothing(JaxNetwork(fresh_jax_model(real, SMALL, 0)), featured_home)


@pytest.mark.slow
def test_a_jax_run_is_tracked_logged_and_gated_like_the_others(
    featured_home: Path, tmp_path: Path
) -> None:
    """On the real feature table: the run as MLflow shows it, then the gate across three
    frameworks (the JAX network first, trees against it, the JAX network again)."""
    pytest.importorskip("lightgbm", reason="the `lightgbm` extra: pip install -e '.[lightgbm]'")
    layout = DataLayout(featured_home)
    tracking = TrackingConfig(featured_home, experiment="jax")
    result = train_jax(layout, tracking, SMALL, replace(FIT, epochs=1, batch_size=4096))
    client = MlflowClient(tracking.resolved_uri)
    run = client.get_run(result.run_id)
    assert result.framework == "jax"
    assert run.data.tags["framework"] == run.data.params["framework"] == "jax"
    assert run.data.params["model.width"] == "16" and run.data.params["device"] == "cpu"
    assert run.info.run_name.endswith(" jax mlp+periodic")
    assert run.data.metrics["test_roc_auc"] > 0.65
    for size in (1, 7, 4096):
        assert run.data.metrics[f"onnx_parity_max_abs_diff_b{size}"] <= 1e-5
    card = run.data.tags["mlflow.note.content"]
    assert card.startswith("jax mlp+periodic trained on 2013-01..2013-10")
    assert "max |ONNX - jax|" in card
    model_dir = download_model(client, result.run_id, tmp_path / "model")
    info = mlflow.models.Model.load(str(model_dir / "MLmodel"))
    assert info.metadata["framework"] == "jax"
    plots = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert "plots/learning_curves.png" in plots
    assert not mlflow.is_tracking_uri_set()

    from tests.training.test_gbdt import SMALL as TREES

    gate = GateConfig(model_name="flight-delay-jax")
    holdout = read_parquet_folder(layout.split("test"))
    first = promote(client, result.run_id, holdout, gate)
    assert first.promoted and first.challenger_framework == "jax"
    trees = train_trees(layout, tracking, TREES)
    second = promote(client, trees.run_id, holdout, gate)
    assert (second.challenger_framework, second.champion_framework) == ("lightgbm", "jax")
    assert second.promoted == (second.challenger_auc > second.champion_auc)
    version = client.get_model_version(gate.model_name, first.version)
    assert version.tags["framework"] == "jax"
