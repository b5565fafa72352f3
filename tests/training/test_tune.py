"""The Optuna study: nested MLflow runs, pruning, resuming and worker processes."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow import MlflowClient

from pipelines.layout import DataLayout
from pipelines.spec import FeatureSpec
from training.config import CatBoostConfig, LightGBMConfig, TrackingConfig, ValidationConfig
from training.fit import FitConfig
from training.study import PARENT_RUN_ATTR, open_storage
from training.tracking import experiment_id, fluent_tracking
from training.train import load_splits, sampled
from training.tune import (
    FINISHED,
    ROUNDS_PER_REPORT,
    RUN_ATTR,
    NetworkTrials,
    Objective,
    TuneConfig,
    best_configs,
    best_trees,
    defaults_as_params,
    suggest,
    suggest_trees,
    tune,
)

SMALL_FIT = FitConfig(batch_size=4096, patience=5)


@pytest.fixture
def home(synthetic_home: Path, tmp_path: Path) -> Path:
    shutil.copytree(synthetic_home / "data", tmp_path / "data")
    return tmp_path


def _children(client: MlflowClient, parent: str, experiment_id: str) -> list:
    return client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent}'")


def test_a_study_nests_one_run_per_trial_and_resumes_with_its_trials(home: Path) -> None:
    tracking = TrackingConfig(home)
    config = TuneConfig(trials=3, epochs=2, study="resume")
    first = tune(DataLayout(home), tracking, config, SMALL_FIT)

    client = MlflowClient(tracking.resolved_uri)
    parent = client.get_run(first.parent_run_id)
    assert parent.data.tags["optuna_study"] == "resume"
    assert parent.info.status == "FINISHED"
    storage = open_storage(config, home)
    study = optuna.load_study(study_name="resume", storage=storage)
    assert study.user_attrs[PARENT_RUN_ATTR] == first.parent_run_id
    trials = study.get_trials(states=FINISHED)
    assert len(trials) == 3
    assert trials[0].params == pytest.approx(defaults_as_params("torch", FitConfig()))
    children = {
        r.info.run_id: r for r in _children(client, parent.info.run_id, parent.info.experiment_id)
    }
    assert {t.user_attrs[RUN_ATTR] for t in trials} == set(children)
    # every trial trains on the study's one seeded draw of 30% of the training rows
    assert study.user_attrs["sample"] == 0.3
    assert parent.data.tags["study.sample"] == "0.3"
    train = load_splits(DataLayout(home), ValidationConfig(split="random"))["train"]
    drawn = sampled(train, 0.3, config.seed)
    assert 0.27 * len(train) < len(drawn) < 0.33 * len(train)
    for trial in trials:
        run = children[trial.user_attrs[RUN_ATTR]]
        assert run.data.params["train_rows"] == str(len(drawn))
        assert run.data.tags["optuna_trial"] == str(trial.number)
        assert run.data.params["model.width"] == str(trial.params["width"])
        assert run.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(first.parent_run_id, "optuna")}
    assert {"optuna/optimization_history.png", "optuna/param_importances.png"} <= artifacts
    assert parent.data.metrics["best_valid_loss"] == pytest.approx(first.best_valid_loss)

    resumed = tune(
        DataLayout(home), tracking, TuneConfig(trials=5, epochs=2, study="resume"), SMALL_FIT
    )
    assert resumed.parent_run_id == first.parent_run_id
    study = optuna.load_study(study_name="resume", storage=storage)
    after = study.get_trials(states=FINISHED)
    assert len(after) == 5
    assert [(t.number, t.value, t.params) for t in after[:3]] == [
        (t.number, t.value, t.params) for t in trials
    ]
    assert len(_children(client, first.parent_run_id, parent.info.experiment_id)) == 5
    # its trials' losses came from a 30% draw: not resumable on another share
    with pytest.raises(ValueError, match=r"searches with sample 0\.3, not 1\.0"):
        tune(DataLayout(home), tracking, replace(config, trials=6, sample=1.0), SMALL_FIT)


def test_the_best_parameters_rebuild_the_best_configs(home: Path) -> None:
    study = optuna.create_study()
    trial = study.ask()
    model, fit = suggest(trial, SMALL_FIT)
    assert best_configs(trial.params, SMALL_FIT) == (model, fit)
    assert fit.patience == SMALL_FIT.patience  # what the search leaves alone stays


def test_a_pruned_trial_stops_after_its_first_epoch_and_says_so(home: Path) -> None:
    layout = DataLayout(home)
    spec = FeatureSpec.load(layout.spec)
    tables = load_splits(layout, ValidationConfig(split="random"))
    tracking = TrackingConfig(home, experiment="pruning")
    client = tracking.client()
    experiment = experiment_id(client, tracking)
    parent = client.create_run(experiment).info.run_id
    objective = Objective(NetworkTrials(spec, tables, SMALL_FIT, 4), client, experiment, parent)
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0))
    with fluent_tracking(tracking):
        study.optimize(objective, n_trials=1)

    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [1]
    run = client.get_run(trial.user_attrs[RUN_ATTR])
    assert run.info.status == "FINISHED"
    assert run.data.tags["optuna_state"] == "PRUNED"
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert [m.step for m in client.get_metric_history(run.info.run_id, "valid_loss")] == [0]


@pytest.mark.slow
def test_workers_run_the_trials_in_their_own_processes(home: Path) -> None:
    tracking = TrackingConfig(home)
    config = TuneConfig(trials=4, epochs=1, workers=2, study="workers", pruner="none")
    result = tune(DataLayout(home), tracking, config, SMALL_FIT)
    # the budget, plus at most one trial per other worker that was already running when the
    # budget was reached (each worker stops after its trial: Optuna's MaxTrialsCallback)
    assert config.trials <= result.counts["complete"] <= config.trials + config.workers - 1
    study = optuna.load_study(study_name="workers", storage=open_storage(config, home))
    workers = {t.user_attrs["worker"] for t in study.get_trials(states=FINISHED)}
    assert workers and all(not w.endswith(f":{os.getpid()}") for w in workers)
    # the trials were logged to this home's store, and no global URI was left behind
    assert not mlflow.is_tracking_uri_set()
    client = tracking.client()
    trials = client.search_runs([experiment_id(client, tracking)], "tags.optuna_study = 'workers'")
    assert len(trials) >= result.counts["complete"] + 1  # the trials and their parent


TREES = LightGBMConfig(rounds=200, early_stopping=10, threads=2)
CATBOOST = CatBoostConfig(rounds=200, early_stopping=10, threads=2)


@pytest.mark.parametrize(
    ("trees", "extra", "searched"),
    [
        pytest.param(TREES, "lightgbm", "num_leaves", id="lightgbm"),
        pytest.param(CATBOOST, "catboost", "depth", id="catboost", marks=pytest.mark.slow),
    ],
)
def test_a_trees_study_searches_its_library_in_a_study_of_its_own(
    trees: LightGBMConfig | CatBoostConfig, extra: str, searched: str, home: Path
) -> None:
    """`framework="lightgbm"` (or `catboost`): each trial boosts until early stopping and
    reports every ROUNDS_PER_REPORT rounds; its nested run logs the trees' parameters; the best
    parameters rebuild the best config; the study cannot be resumed as the network's."""
    pytest.importorskip(extra, reason=f"the `{extra}` extra: pip install -e '.[{extra}]'")
    framework = trees.framework
    tracking = TrackingConfig(home)
    config = TuneConfig(trials=3, study=framework, framework=framework)
    result = tune(DataLayout(home), tracking, config, SMALL_FIT, trees=trees)
    assert result.counts["complete"] + result.counts["pruned"] == 3
    study = optuna.load_study(study_name=framework, storage=open_storage(config, home))
    assert study.user_attrs["framework"] == framework
    assert study.trials[0].params == pytest.approx(defaults_as_params(framework, SMALL_FIT))
    best = study.best_trial
    assert set(best.params) >= {searched, "learning_rate"}
    assert all(step % ROUNDS_PER_REPORT == 0 for step in best.intermediate_values)
    rebuilt = best_trees(result.best_params, trees)
    assert rebuilt == suggest_trees(optuna.trial.FixedTrial(best.params), trees)
    assert (rebuilt.rounds, rebuilt.threads) == (trees.rounds, trees.threads)
    client = MlflowClient(tracking.resolved_uri)
    run = client.get_run(best.user_attrs[RUN_ATTR])
    assert run.data.params[f"{framework}.{searched}"] == str(best.params[searched])
    assert run.data.metrics["valid_roc_auc"] == best.user_attrs["valid_roc_auc"]
    with pytest.raises(ValueError, match=f"searches with framework {framework}, not torch"):
        tune(DataLayout(home), tracking, TuneConfig(trials=4, study=framework), SMALL_FIT)
    # its losses were measured on the validation month: not resumable on another split
    assert study.user_attrs["validation"] == {"validation": "month"}
    assert study.user_attrs["sample"] == 1.0  # trees boost on every row, whatever the setting
    month = ValidationConfig(split="month")
    assert run.data.params["train_rows"] == str(len(load_splits(DataLayout(home), month)["train"]))
    random = ValidationConfig(split="random")
    with pytest.raises(ValueError, match=r"searches with validation .*'month'.*, not"):
        tune(DataLayout(home), tracking, config, SMALL_FIT, trees=trees, validation=random)
    other = LightGBMConfig() if framework == "catboost" else CatBoostConfig()
    with pytest.raises(ValueError, match=f"a {other.framework} config for a {framework} study"):
        tune(DataLayout(home), tracking, replace(config, trials=4), SMALL_FIT, trees=other)
