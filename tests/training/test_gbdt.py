"""Gradient-boosted trees (LightGBM, CatBoost) as other frameworks: the same encoded inputs, the
same ONNX contract and parity check, the same tracked run, and a gate that compares across
frameworks."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import mlflow
import onnx
import pandas as pd
import pytest
from mlflow import MlflowClient

from pipelines.layout import DataLayout
from pipelines.spec import FeatureSpec, part_of
from pipelines.storage import read_parquet_folder
from training.config import CatBoostConfig, GateConfig, LightGBMConfig, TrackingConfig
from training.export import INPUTS, OUTPUT, check_parity
from training.fit import FitConfig
from training.gbdt import CatBoosting, GradientBoosting, fit_trees
from training.model import ModelConfig
from training.registry import download_model, promote
from training.train import train, train_trees

from .conftest import assert_a_drifted_export_logs_nothing

pytest.importorskip("lightgbm", reason="the `lightgbm` extra: pip install -e '.[lightgbm]'")

SMALL = LightGBMConfig(
    rounds=300, early_stopping=10, learning_rate=0.3, num_leaves=15, threads=2
)  # stops early in a few seconds
SMALL_CATBOOST = CatBoostConfig(rounds=300, early_stopping=10, learning_rate=0.3, threads=2)
CATBOOST = pytest.mark.skipif(
    find_spec("catboost") is None, reason="the `catboost` extra: pip install -e '.[catboost]'"
)
EACH = [
    pytest.param(SMALL, id="lightgbm"),
    # CatBoost in the long variant: LightGBM covers the trees' path in `make test`
    pytest.param(SMALL_CATBOOST, id="catboost", marks=[CATBOOST, pytest.mark.slow]),
]


@pytest.fixture(scope="module", params=EACH)
def boosted(request: pytest.FixtureRequest, tables: dict[str, pd.DataFrame], spec: FeatureSpec):
    train, valid = part_of(tables["train"], spec), part_of(tables["valid"], spec)
    return fit_trees(spec, train, valid, request.param)


def trees_in(model: GradientBoosting | CatBoosting) -> int:
    if isinstance(model, CatBoosting):
        return model.model.tree_count_
    return model.booster.num_trees()


def test_the_export_matches_the_library_at_every_batch_size(
    boosted, tables: dict[str, pd.DataFrame], spec: FeatureSpec, tmp_path: Path
) -> None:
    codes, values, _ = part_of(tables["valid"], spec)
    path = boosted.model.export_onnx(codes, values, tmp_path / "model.onnx")
    report = check_parity(boosted.model, path, codes, values)
    assert report.rows[4096] == len(codes)
    assert set(report.max_abs_diff) == {1, 7, 4096}
    assert max(report.max_abs_diff.values()) <= 1e-5
    assert trees_in(boosted.model) == boosted.best_round + 1  # cut to its best round
    assert len(boosted.valid_loss) > boosted.best_round + 1  # it stopped past the best
    assert boosted.valid_loss[boosted.best_round] == min(boosted.valid_loss)


def test_the_trees_file_is_on_the_contract(
    boosted, tables: dict[str, pd.DataFrame], spec: FeatureSpec, tmp_path: Path
) -> None:
    codes, values, _ = part_of(tables["valid"].head(10), spec)
    path = boosted.model.export_onnx(codes, values, tmp_path / "m.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == list(INPUTS)
    assert [o.name for o in graph.output] == [OUTPUT]
    types = [i.type.tensor_type.elem_type for i in graph.input]
    assert types == [onnx.TensorProto.INT64, onnx.TensorProto.FLOAT]
    for tensor in [*graph.input, *graph.output]:
        batch = tensor.type.tensor_type.shape.dim[0]
        assert batch.dim_param and not batch.HasField("dim_value")


@pytest.mark.parametrize("config", EACH)
def test_trees_that_drifted_from_their_export_fail_parity_and_log_nothing(
    config: LightGBMConfig | CatBoostConfig, featured_home: Path
) -> None:
    """A candidate whose own predictions differ from its file: nothing is logged."""

    layout = DataLayout(featured_home)
    real = FeatureSpec.load(layout.spec)
    table = read_parquet_folder(layout.split("train")).head(5_000)
    fitted = fit_trees(real, part_of(table, real), part_of(table, real), config).model
    assert_a_drifted_export_logs_nothing(fitted, featured_home)


@pytest.mark.parametrize("config", EACH)
def test_a_trees_run_is_tracked_and_logged_like_the_networks(
    config: LightGBMConfig | CatBoostConfig, featured_home: Path, tmp_path: Path
) -> None:
    framework = config.framework
    tracking = TrackingConfig(featured_home, experiment=framework)
    result = train_trees(DataLayout(featured_home), tracking, config)
    client = MlflowClient(tracking.resolved_uri)
    run = client.get_run(result.run_id)
    assert result.framework == framework
    assert run.data.tags["framework"] == run.data.params["framework"] == framework
    assert run.data.params[f"{framework}.learning_rate"] == "0.3"
    assert run.info.run_name.endswith(f" {framework}")
    assert run.data.metrics["test_roc_auc"] > 0.65
    assert run.data.metrics["best_round"] >= 0
    for size in (1, 7, 4096):
        assert run.data.metrics[f"onnx_parity_max_abs_diff_b{size}"] <= 1e-5
    card = run.data.tags["mlflow.note.content"]
    # "auto": the trees stop early on the validation month (random rows overfit them)
    assert card.startswith(f"{framework} trained on 2013-01..2013-09")
    assert run.data.params["validation"] == "month"
    library = {"lightgbm": "LightGBM", "catboost": "CatBoost"}[framework]
    assert f"({library})" in card and f"max |ONNX - {framework}|" in card
    model_dir = download_model(client, result.run_id, tmp_path / "model")
    info = mlflow.models.Model.load(str(model_dir / "MLmodel"))
    assert info.metadata["framework"] == framework
    assert info.metadata["onnx_sha256"] == result.model.onnx_sha256
    plots = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    for name in ("learning_curves", "roc", "calibration", "permutation_importance"):
        assert f"plots/{name}.png" in plots
    assert not mlflow.is_tracking_uri_set()


@pytest.mark.slow
def test_the_gate_compares_across_frameworks_and_promotes_only_on_a_gain(
    featured_home: Path,
) -> None:
    """A barely trained network is the champion; the trees beat it and take the alias; the
    same barely trained network again is kept out. Each decision names both frameworks, on
    the run and on the version."""
    layout = DataLayout(featured_home)
    tracking = TrackingConfig(featured_home, experiment="across")
    gate = GateConfig(model_name="flight-delay-across")
    holdout = read_parquet_folder(layout.split("test"))
    client = tracking.client()
    barely = (
        ModelConfig(width=16, depth=1, numeric_dim=2),
        FitConfig(epochs=1, learning_rate=1e-6),
    )
    network = train(layout, tracking, *barely)
    assert network is not None
    first = promote(client, network.run_id, holdout, gate)
    assert first.promoted and first.challenger_framework == "torch"

    trees = train_trees(layout, tracking, SMALL)
    won = promote(client, trees.run_id, holdout, gate)
    assert won.promoted, won.reason
    assert won.challenger_auc > won.champion_auc
    assert (won.challenger_framework, won.champion_framework) == ("lightgbm", "torch")
    assert "challenger (lightgbm)" in won.reason and "(torch)" in won.reason
    run = client.get_run(trees.run_id).data
    assert run.tags["gate_challenger_framework"] == "lightgbm"
    assert run.tags["gate_champion_framework"] == "torch"
    assert run.metrics["gate_champion_auc"] == pytest.approx(won.champion_auc)
    assert client.get_model_version(gate.model_name, won.version).tags["framework"] == "lightgbm"

    again = train(layout, tracking, *barely)
    assert again is not None
    lost = promote(client, again.run_id, holdout, gate)
    assert not lost.promoted
    assert (lost.challenger_framework, lost.champion_framework) == ("torch", "lightgbm")
    champion = client.get_model_version_by_alias(gate.model_name, gate.alias)
    assert str(champion.version) == won.version
