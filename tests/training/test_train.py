"""A tracked training run on the real feature table, read back from MLflow's store."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from pipelines.features import build_features_pandas
from pipelines.layout import DataLayout
from pipelines.splits import SplitPlan
from training.fit import FitConfig
from training.model import ModelConfig
from training.tracking import TrackingConfig
from training.train import train


@pytest.fixture(scope="module")
def featured_home(ingested_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("featured")
    shutil.copytree(ingested_home / "data" / "bronze", home / "data" / "bronze")
    build_features_pandas(DataLayout(home), SplitPlan())
    return home


def test_a_run_records_parameters_epochs_data_and_spec(featured_home: Path) -> None:
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
    assert [m.step for m in client.get_metric_history(result.run_id, "valid_loss")] == [0, 1]
    assert run.data.metrics["test_roc_auc"] > 0.65
    inputs = {d.dataset.name: d.dataset for d in run.inputs.dataset_inputs}
    assert {"flights-train", "flights-valid", "flights-test"} <= set(inputs)
    assert all(len(d.digest) > 0 for d in inputs.values())
    artifacts = [a.path for a in client.list_artifacts(result.run_id)]
    assert "feature_spec.json" in artifacts
    assert (featured_home / "mlflow.db").exists()
    assert mlflow.get_tracking_uri() == tracking.resolved_uri
