"""The training steps: a tracked run, a study, and the gate between challenger and champion."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING

from mlops.configs import layout_of, mlflow_client, require_store, tracking_of
from mlops.flows.data import require_features
from mlops.flows.progress import Progress
from mlops.settings import Settings
from pipelines.errors import ChallengerRejectedError, NoDataError
from training.config import TREES, FitConfig, Framework, GateConfig, ModelConfig, TuneConfig

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient

    from training.registry import Decision
    from training.train import TrainResult
    from training.tune import TuneResult


@dataclass(frozen=True)
class Evaluation:
    run_id: str
    holdout_rows: int
    auc: float
    log_loss: float
    champion_version: str | None = None
    champion_auc: float | None = None
    champion_log_loss: float | None = None


def train(
    settings: Settings,
    progress: Progress,
    model_config: ModelConfig | None = None,
    fit_config: FitConfig | None = None,
    name_prefix: str = "train",
    framework: Framework = "torch",
) -> TrainResult | None:
    """One tracked run on the feature table; None on the helper ranks of a torchrun job.
    `framework`: the network (`torch`, or `jax`, with `model_config` and `fit_config`) or
    gradient-boosted trees (`lightgbm` or `catboost`, with the settings' section of that name)."""
    layout = layout_of(settings)
    require_features(layout)
    require_store(settings)  # it answers before minutes of training are spent (every rank)
    if framework in TREES:
        return _train_trees(settings, progress, name_prefix, framework)
    from mlops.logs import adopt
    from training.fit import EpochResult
    from training.train import train as train_torch
    from training.train import train_ported

    adopt("torch")  # wired to stderr by its import
    train_run = train_torch if framework == "torch" else partial(train_ported, framework)
    fit_config = fit_config or settings.fit
    label = "training" if framework == "torch" else f"training {framework}"
    with progress.stage(label, total=fit_config.epochs) as update:

        def advance(epoch: EpochResult) -> None:
            update(
                advance=1,
                description=f"{label}: valid loss {epoch.valid_loss:.4f}, "
                f"{epoch.samples_per_s:,.0f} samples/s",
            )

        return train_run(
            layout,
            tracking_of(settings),
            model_config or settings.model,
            fit_config,
            advance,
            name_prefix,
            settings.validation,
        )


def _train_trees(
    settings: Settings, progress: Progress, name_prefix: str, framework: str
) -> TrainResult:
    from training.train import train_trees

    config = settings.trees(framework)
    with progress.stage(f"training {framework}", total=config.rounds) as update:

        def advance(round_: int, valid_loss: float) -> None:
            update(completed=round_ + 1, description=f"{framework}: valid loss {valid_loss:.4f}")

        return train_trees(
            layout_of(settings),
            tracking_of(settings),
            config,
            advance,
            name_prefix,
            settings.validation,
        )


def tune(settings: Settings, progress: Progress, config: TuneConfig) -> TuneResult:
    """The study to its budget (resumable), one nested MLflow run per trial."""
    from mlops.logs import adopt
    from training.tune import tune as tune_study

    adopt("torch")  # wired to stderr by its import

    layout = layout_of(settings)
    require_features(layout)
    require_store(settings)
    with progress.stage(f"tuning study {config.study}", total=config.trials) as update:

        def advance(finished: int) -> None:
            update(completed=min(finished, config.trials))

        trees = settings.trees(config.framework) if config.framework in TREES else None
        return tune_study(
            layout, tracking_of(settings), config, settings.fit, advance, trees, settings.validation
        )


def best_of_study(settings: Settings, tuned: TuneResult, epochs: int | None = None):
    """The model and fit configs of the network's study's best trial, for the final run."""
    from training.tune import best_configs

    fit_config = settings.fit if epochs is None else replace(settings.fit, epochs=epochs)
    return best_configs(tuned.best_params, fit_config)


def with_best_trees(settings: Settings, framework: str, best_params: dict[str, object]) -> Settings:
    """The settings with the trees' study's best configuration as their `framework` section."""
    from training.tune import best_trees

    best = best_trees(best_params, settings.trees(framework))
    return settings.model_copy(update={framework: best})


def newest_holdout(settings: Settings) -> pd.DataFrame:
    from pipelines.storage import read_parquet_folder

    layout = layout_of(settings)
    require_features(layout)
    return read_parquet_folder(layout.split("test"))


def latest_run(client: MlflowClient, settings: Settings) -> str:
    """The newest finished training run that logged a model."""
    from training.tracking import experiment_id

    runs = client.search_runs(
        [experiment_id(client, tracking_of(settings))],
        "attributes.status = 'FINISHED' and tags.onnx_sha256 != ''",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise NoDataError("no finished training run with a model: run `mlops train` first")
    return runs[0].info.run_id


def gate_of(settings: Settings, min_auc_gain: float | None = None) -> GateConfig:
    gate = settings.gate
    return gate if min_auc_gain is None else replace(gate, min_auc_gain=min_auc_gain)


def promote(
    settings: Settings,
    run_id: str | None = None,
    min_auc_gain: float | None = None,
    require_promotion: bool = False,
) -> Decision:
    """Register the run's model (default: the latest); the alias moves only if it is better."""
    from training.registry import promote as gate_and_register

    client = mlflow_client(settings)
    run_id = run_id or latest_run(client, settings)
    decision = gate_and_register(
        client, run_id, newest_holdout(settings), gate_of(settings, min_auc_gain)
    )
    if require_promotion and not decision.promoted:
        raise ChallengerRejectedError(f"version {decision.version} kept out: {decision.reason}")
    return decision


def evaluate(settings: Settings, run_id: str | None = None) -> Evaluation:
    """A run's model (default: the latest) and the champion on the newest holdout."""
    from training.registry import champion_of, holdout_metrics

    client = mlflow_client(settings)
    run_id = run_id or latest_run(client, settings)
    holdout = newest_holdout(settings)
    auc, loss = holdout_metrics(client, run_id, holdout)
    evaluation = Evaluation(run_id, len(holdout), auc, loss)
    champion = champion_of(client, settings.gate)
    if champion is None:
        return evaluation
    champion_auc, champion_loss = holdout_metrics(client, champion.run_id, holdout)
    return replace(
        evaluation,
        champion_version=str(champion.version),
        champion_auc=champion_auc,
        champion_log_loss=champion_loss,
    )


def has_champion(settings: Settings) -> bool:
    from training.registry import champion_of

    return champion_of(mlflow_client(settings), settings.gate) is not None
