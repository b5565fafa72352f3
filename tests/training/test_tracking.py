"""What MLflow's UI shows of the work: a model training experiment, named runs, model cards."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.tracking._tracking_service import utils as tracking_utils

from pipelines.spec import FeatureSpec
from pipelines.storage import read_parquet_folder
from tests.training.conftest import write_feature_table
from training.config import FitConfig, GateConfig, ModelConfig, TrackingConfig
from training.model_card import PREDICTS, run_name, window
from training.registry import promote
from training.tracking import (
    DESCRIPTION_TAG,
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING,
    experiment_id,
    experiment_page,
    fluent_tracking,
)
from training.train import train


def test_runs_and_the_registered_model_carry_names_and_model_cards(tmp_path: Path) -> None:
    layout = write_feature_table(tmp_path, rows=8_000)
    tracking = TrackingConfig(tmp_path)
    model = ModelConfig(backbone="mlp", numeric_embedding="periodic", width=16, depth=1)
    result = train(layout, tracking, model, FitConfig(epochs=1, batch_size=4096))
    client = MlflowClient(tracking.resolved_uri)

    experiment = client.get_experiment_by_name(tracking.experiment)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING == "custom_model_development"
    assert "trial-N" in experiment.tags[DESCRIPTION_TAG]

    run = client.get_run(result.run_id)
    # the synthetic table's training month and validation month, a random 10% held out
    assert run.info.run_name == "train 2013-01..2013-10 mlp+periodic"
    card = run.data.tags[DESCRIPTION_TAG]
    assert card.startswith("mlp+periodic trained on 2013-01..2013-10: test ROC-AUC 0.")
    assert PREDICTS in card
    for line in (
        "Training months: 2013-01..2013-10",
        "Validation (a random 10% of the rows of 2013-01..2013-10, not trained on): ROC-AUC",
        "Test (2013-11)",
    ):
        assert line in card
    assert "mlp backbone" in card and "`periodic`" in card and "ONNX parity: max" in card

    gate = GateConfig(model_name="flight-delay-card")
    decision = promote(client, result.run_id, read_parquet_folder(layout.split("test")), gate)
    assert client.get_registered_model(gate.model_name).description.startswith(PREDICTS)
    version_card = client.get_model_version(gate.model_name, decision.version).description
    assert version_card.startswith(card) and "Gate: first model" in version_card


def test_an_older_experiment_gets_the_kind_and_keeps_its_own_description(tmp_path: Path) -> None:
    tracking = TrackingConfig(tmp_path, experiment="made-before")
    client = tracking.client()
    made = client.create_experiment(
        tracking.experiment, tags={DESCRIPTION_TAG: "a user's own words"}
    )
    assert experiment_id(client, tracking) == made
    tags = client.get_experiment(made).tags
    assert tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING
    assert tags[DESCRIPTION_TAG] == "a user's own words"


def test_run_names_say_window_architecture_and_purpose(spec: FeatureSpec) -> None:
    resnet = ModelConfig(backbone="resnet", numeric_embedding="ple")
    months = spec.splits["train"].months
    assert run_name(months, resnet) == "train 2013-01 resnet+ple"
    assert run_name(months, resnet, "retrain 2013-12:") == "retrain 2013-12: 2013-01 resnet+ple"
    assert window(["2013-03", "2013-01", "2013-02"]) == window("2013-01,2013-02,2013-03")
    assert window("2013-01,2013-02,2013-03") == "2013-01..2013-03"


def test_the_ui_address_opens_the_model_training_view() -> None:
    assert experiment_page("http://127.0.0.1:5000/", "3") == (
        "http://127.0.0.1:5000/#/experiments/3?workflowType=machine_learning"
    )


@pytest.mark.parametrize("exported", [None, "sqlite:////elsewhere/mlflow.db"])
def test_a_tracked_run_leaves_mlflows_global_and_environment_as_it_found_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exported: str | None
) -> None:
    # A URI the environment names must not outlive it as MLflow's module global: later runs in
    # the process, and the workers and ranks it spawns, would be aimed at a store long gone.
    if exported is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", exported)
    tracking = TrackingConfig(tmp_path)
    with fluent_tracking(tracking):
        assert mlflow.get_tracking_uri() == tracking.resolved_uri
    assert tracking_utils._tracking_uri is None
    assert os.environ.get("MLFLOW_TRACKING_URI") == exported


def test_a_table_dataset_has_mlflows_schema_and_a_digest_of_every_row(
    featured_home: Path,
) -> None:
    from mlflow.types.utils import _infer_schema

    from pipelines.layout import DataLayout
    from training.tracking import TableDataset, local_dataset_source
    from training.train import _integers_as_floats

    layout = DataLayout(featured_home)
    table = _integers_as_floats(read_parquet_folder(layout.split("valid")))
    source = local_dataset_source(layout.split("valid"))
    dataset = TableDataset(table, source, name="flights-valid", targets="delayed")
    assert len(table) > 20_000 and table.dtypes.nunique() > 2  # strings, numbers, a datetime
    assert dataset.schema == _infer_schema(table)  # what MLflow infers reading every value
    assert dataset.profile["num_rows"] == len(table)
    changed = table.copy()
    changed.loc[len(table) - 1, "distance"] += 1  # past the 10,000 rows MLflow's digest reads
    assert TableDataset(changed, source, "flights-valid", "delayed").digest != dataset.digest
    assert TableDataset(table.copy(), source, "flights-valid", "delayed").digest == dataset.digest
