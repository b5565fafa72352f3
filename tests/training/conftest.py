"""A small synthetic feature table with a known signal, and its spec built by the real code."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from pipelines.layout import DataLayout
from pipelines.spec import LABEL, FeatureSpec, build_spec, encode, psi_bins, summarize
from pipelines.storage import read_parquet_folder
from pipelines.transform import CATEGORICAL, NUMERICAL
from training.bundle import log_onnx_model
from training.config import TrackingConfig
from training.export import Candidate, ParityError
from training.tracking import fluent_tracking


def synthetic_table(rows: int, seed: int) -> pd.DataFrame:
    """Delays driven by `origin_dep_delay_mean_0_1h` and the carrier; the rest is noise."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame({name: rng.normal(10, 5, rows) for name in NUMERICAL})
    for name in CATEGORICAL:
        table[name] = rng.choice(["A", "B", "C", "D"], rows).astype(object)
    table.loc[rng.random(rows) < 0.05, "temp"] = np.nan
    signal = (table["origin_dep_delay_mean_0_1h"] - 10) / 2 + np.where(
        table["carrier"] == "A", 2, 0
    )
    table[LABEL] = (rng.random(rows) < 1 / (1 + np.exp(-(signal - 1)))).astype("int8")
    table["scheduled_departure"] = pd.Timestamp("2013-11-01") + pd.to_timedelta(
        rng.integers(0, 60 * 24 * 30, rows), unit="min"
    )
    return table


@pytest.fixture(scope="session")
def tables() -> dict[str, pd.DataFrame]:
    return {"train": synthetic_table(6_000, 0), "valid": synthetic_table(2_000, 1)}


@pytest.fixture(scope="session")
def spec(tables: dict[str, pd.DataFrame]) -> FeatureSpec:
    parts = [summarize(tables["train"], "2013-01", "train", 0)]
    parts.append(summarize(tables["valid"], "2013-10", "valid", 0))
    return build_spec(parts, min_category_count=1)


def write_feature_table(home: Path, rows: int = 20_000) -> DataLayout:
    """A synthetic feature table, spec and (empty) lookups where the pipeline writes them."""
    layout = DataLayout(home)
    tables = {
        "train": synthetic_table(rows, 0),
        "valid": synthetic_table(rows // 4, 1),
        "test": synthetic_table(rows // 4, 2),
    }
    months = {"train": "2013-01", "valid": "2013-10", "test": "2013-11"}
    parts = [summarize(table, months[name], name, 0) for name, table in tables.items()]
    for name, table in tables.items():
        layout.split(name).mkdir(parents=True)
        table.to_parquet(layout.split(name) / "part-0.parquet")
    build_spec(parts, min_category_count=1).save(layout.spec)
    layout.lookups.mkdir(parents=True)
    return layout


@pytest.fixture(scope="session")
def synthetic_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only MLOPS_HOME with a synthetic feature table: copy it before writing there."""
    home = tmp_path_factory.mktemp("synthetic")
    write_feature_table(home)
    return home


def assert_a_drifted_export_logs_nothing(candidate: Candidate, home: Path) -> None:
    """`candidate` made to predict 1e-4 off its own ONNX file, then logged on `home`'s real
    feature table: the parity check refuses it, the run fails and logs no artifact, no model."""

    class DriftsWhenExported:
        framework = candidate.framework
        export_onnx = candidate.export_onnx

        def predict(self, categorical: np.ndarray, numerical: np.ndarray) -> np.ndarray:
            return candidate.predict(categorical, numerical) + np.float32(1e-4)

    layout = DataLayout(home)
    real = FeatureSpec.load(layout.spec)
    data = encode(read_parquet_folder(layout.split("test")).head(1_000), real)
    tracking = TrackingConfig(home, experiment=f"{candidate.framework}-parity-failure")
    with (
        pytest.raises(ParityError, match=f"differs from {candidate.framework}"),
        fluent_tracking(tracking) as experiment_id,
        mlflow.start_run(experiment_id=experiment_id) as run,
    ):
        holdout = {"roc_auc": 0.5, "log_loss": 0.7, "mean_probability": 0.2, "delay_rate": 0.2}
        output = psi_bins(np.linspace(0, 1, 99))
        log_onnx_model(DriftsWhenExported(), layout, real, data, 0.5, holdout, output)
    client = MlflowClient(tracking.resolved_uri)
    assert client.get_run(run.info.run_id).info.status == "FAILED"
    assert client.list_artifacts(run.info.run_id) == []
    assert client.search_logged_models([run.info.experiment_id]) == []
