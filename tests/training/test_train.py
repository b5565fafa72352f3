"""A tracked training run on the real feature table, read back from MLflow's store."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from pipelines.layout import DataLayout
from pipelines.spec import FeatureSpec, encode, psi_bins, sha256_of
from pipelines.storage import read_parquet_folder
from training.bundle import log_onnx_model
from training.config import TrackingConfig, ValidationConfig
from training.export import ParityError
from training.fit import FitConfig
from training.model import ModelConfig, TabularNet
from training.network import Network
from training.registry import GateConfig, download_model, promote
from training.tracking import fluent_tracking
from training.train import load_splits, train


def test_a_run_records_parameters_epochs_data_and_spec(featured_home: Path, tmp_path: Path) -> None:
    tracking = TrackingConfig(featured_home)
    result = train(
        DataLayout(featured_home),
        tracking,
        ModelConfig(width=16, depth=1, numeric_dim=2),
        FitConfig(epochs=2, batch_size=4096, patience=5),
    )
    client = MlflowClient(tracking.resolved_uri)
    run = client.get_run(result.run_id)
    assert run.data.params["model.width"] == "16"
    assert run.data.params["fit.epochs"] == "2"
    # the default validation: a random 10% of every labelled month, the rest trained on
    assert run.data.params["validation"] == "random"
    assert run.data.params["validation_fraction"] == "0.1"
    labelled = ",".join(f"2013-{month:02d}" for month in range(1, 11))
    assert run.data.params["train_months"] == run.data.params["valid_months"] == labelled
    assert run.data.params["test_months"] == "2013-11,2013-12"
    assert [m.step for m in client.get_metric_history(result.run_id, "valid_loss")] == [0, 1]
    assert run.data.metrics["test_roc_auc"] > 0.65
    inputs = {d.dataset.name: d.dataset for d in run.inputs.dataset_inputs}
    assert {"flights-train", "flights-valid", "flights-test"} <= set(inputs)
    assert all(len(d.digest) > 0 for d in inputs.values())
    artifacts = [a.path for a in client.list_artifacts(result.run_id)]
    assert "feature_spec.json" in artifacts
    assert (featured_home / "mlflow.db").exists()
    for size in (1, 7, 4096):
        assert run.data.metrics[f"onnx_parity_max_abs_diff_b{size}"] <= 1e-5
    model_dir = download_model(client, result.run_id, tmp_path / "model")
    assert (model_dir / "model.onnx").exists() and (model_dir / "MLmodel").exists()
    assert sha256_of(model_dir / "model.onnx") == result.model.onnx_sha256
    info = mlflow.models.Model.load(str(model_dir / "MLmodel"))
    assert info.metadata["onnx_sha256"] == result.model.onnx_sha256
    assert 0 < info.metadata["decision_threshold"] < 1
    assert info.signature.inputs.input_names() == ["categorical", "numerical"]
    plots = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    for name in ("learning_curves", "roc", "calibration", "permutation_importance"):
        assert f"plots/{name}.png" in plots
    contract = [a.path for a in client.list_artifacts(result.run_id, "contract")]
    assert "contract/feature_spec.json" in contract and "contract/lookups" in contract
    assert not mlflow.is_tracking_uri_set()  # the run's store was not left as the global


def _sorted(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values(list(table.columns)).reset_index(drop=True)


def test_a_random_validation_split_holds_out_a_seeded_tenth_of_the_labelled_months(
    featured_home: Path,
) -> None:
    layout = DataLayout(featured_home)
    by_month = load_splits(layout, ValidationConfig(split="month"))
    built = {split: read_parquet_folder(layout.split(split)) for split in by_month}
    for split, table in by_month.items():  # "month" is the feature build's own time split
        pd.testing.assert_frame_equal(table, built[split])
    random = load_splits(layout, ValidationConfig(split="random"))
    labelled = pd.concat([by_month["train"], by_month["valid"]], ignore_index=True)
    # every labelled row is in exactly one of train and valid, and the test months untouched
    pd.testing.assert_frame_equal(
        _sorted(pd.concat([random["train"], random["valid"]], ignore_index=True)),
        _sorted(labelled),
    )
    pd.testing.assert_frame_equal(random["test"], by_month["test"])
    assert len(random["valid"]) / len(labelled) == pytest.approx(0.1, abs=0.005)
    month = {split: random[split]["scheduled_departure"].dt.month for split in ("train", "valid")}
    assert set(month["valid"]) == set(month["train"]) == set(range(1, 11))
    held = month["valid"].value_counts(normalize=True).sort_index()
    everywhere = labelled["scheduled_departure"].dt.month.value_counts(normalize=True)
    assert np.allclose(held, everywhere.sort_index(), atol=0.01)  # no month favoured
    again = load_splits(layout, ValidationConfig(split="random"))
    pd.testing.assert_frame_equal(again["valid"], random["valid"])  # seeded
    other = load_splits(layout, ValidationConfig(split="random", seed=1, fraction=0.2))
    assert len(other["valid"]) / len(labelled) == pytest.approx(0.2, abs=0.005)
    assert not other["valid"].head(100).equals(random["valid"].head(100))


class DriftsWhenExported(TabularNet):
    """Eager mode and the exported graph disagree: what a parity check exists to catch."""

    def forward(self, categorical, numerical):
        out = super().forward(categorical, numerical)
        return out if torch.compiler.is_exporting() else out + 0.01


def test_a_failing_parity_check_logs_no_model(featured_home: Path) -> None:
    layout = DataLayout(featured_home)
    spec = FeatureSpec.load(layout.spec)
    table = read_parquet_folder(layout.split("test")).head(1_000)
    data = encode(table, spec)
    model = DriftsWhenExported(spec, ModelConfig(width=16, depth=1)).eval()
    tracking = TrackingConfig(featured_home, experiment="parity-failure")
    with (
        pytest.raises(ParityError),
        fluent_tracking(tracking) as experiment_id,
        mlflow.start_run(experiment_id=experiment_id) as run,
    ):
        holdout = {"roc_auc": 0.5, "log_loss": 0.7, "mean_probability": 0.2, "delay_rate": 0.2}
        bins = psi_bins(np.linspace(0.0, 1.0, 1_000))
        log_onnx_model(Network(model), layout, spec, data, 0.5, holdout, bins)
    client = MlflowClient(tracking.resolved_uri)
    assert client.get_run(run.info.run_id).info.status == "FAILED"
    assert client.list_artifacts(run.info.run_id) == []
    assert client.search_logged_models([run.info.experiment_id]) == []


def _shuffled_copy(home: Path, target: Path) -> DataLayout:
    """The same feature table with the training labels permuted: a model that learns nothing."""
    shutil.copytree(home / "data", target / "data")
    layout = DataLayout(target)
    for path in layout.split("train").glob("*.parquet"):
        table = pd.read_parquet(path)
        table["delayed"] = np.random.default_rng(0).permutation(table["delayed"].to_numpy())
        table.to_parquet(path)
    return layout


@pytest.mark.slow
def test_the_gate_keeps_the_champion_against_a_worse_challenger(
    featured_home: Path, tmp_path: Path
) -> None:
    tracking = TrackingConfig(featured_home, experiment="gate")
    small = (ModelConfig(width=16, depth=1, numeric_dim=2), FitConfig(epochs=1, batch_size=4096))
    layout = DataLayout(featured_home)
    holdout = read_parquet_folder(layout.split("test"))
    gate = GateConfig(model_name="flight-delay-test")

    good = train(layout, tracking, *small)
    client = tracking.client()
    first = promote(client, good.run_id, holdout, gate)
    assert first.promoted and first.champion_version is None

    shuffled = train(_shuffled_copy(featured_home, tmp_path), tracking, *small)
    second = promote(client, shuffled.run_id, holdout, gate)
    assert not second.promoted
    assert second.challenger_auc < second.champion_auc
    champion = client.get_model_version_by_alias(gate.model_name, gate.alias)
    assert str(champion.version) == first.version
    run = client.get_run(shuffled.run_id)
    assert run.data.tags["gate_decision"] == "rejected"
    assert run.data.metrics["gate_champion_auc"] == pytest.approx(second.champion_auc)
    card = client.get_model_version(gate.model_name, second.version).description
    assert "Gate: challenger (torch) ROC-AUC" in card and shuffled.run_id in card
