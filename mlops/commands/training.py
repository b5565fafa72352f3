"""`mlops train`, `mlops tune`, `mlops evaluate`, `mlops promote`."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Annotated, Literal

import typer

from mlops.configs import tracking_of, tune_of
from mlops.console import Bars, console, decision_line, show_metrics
from mlops.settings import Settings
from pipelines.redact import redact
from training.config import TREES, Framework

RunOption = Annotated[str | None, typer.Option(help="the run (default: the latest)")]
FrameworkOption = Annotated[
    Framework,
    typer.Option(
        help="what makes the model: the network in PyTorch, in JAX (the `jax` extra) or in "
        "TensorFlow (the `tf` extra), or gradient-boosted trees (LightGBM: MLOPS_LIGHTGBM__*, "
        "CatBoost: MLOPS_CATBOOST__*)"
    ),
]


def train_command(
    ctx: typer.Context,
    epochs: Annotated[int | None, typer.Option(min=1, help="at most this many epochs")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1)] = None,
    learning_rate: Annotated[float | None, typer.Option(min=0.0)] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    framework: FrameworkOption = "torch",
) -> None:
    """Train a model on the feature table, tracked in MLflow and exported to ONNX.

    The network by default; data-parallel on N GPUs or processes with
    `torchrun --nproc_per_node N -m mlops train`. `--framework jax` or `tf` trains the same
    network in JAX or TensorFlow (the extra of that name), `--framework lightgbm` or
    `catboost` boosts trees (likewise); each is registered, gated and served the same way.
    """
    from mlops.flows import training
    from training.distributed import process_group

    settings: Settings = ctx.obj
    given = {
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
    }
    fit_config = replace(settings.fit, **{k: v for k, v in given.items() if v is not None})
    if framework != "torch" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise typer.BadParameter(
            f"torchrun starts the PyTorch network's data-parallel training; run --framework "
            f"{framework} as a single process (`mlops train --framework {framework}`)"
        )
    if framework in TREES:
        if epochs is not None or batch_size is not None:
            raise typer.BadParameter(
                "--epochs and --batch-size are the network's; boosting stops early on its own "
                f"(its most rounds: MLOPS_{framework.upper()}__ROUNDS)"
            )
        if learning_rate is not None or seed is not None:
            trees = settings.trees(framework)
            trees = replace(
                trees,
                learning_rate=learning_rate or trees.learning_rate,
                seed=trees.seed if seed is None else seed,
            )
            settings = settings.model_copy(update={framework: trees})
        result = training.train(settings, Bars(), framework=framework)
    elif framework != "torch":  # the network in JAX or TensorFlow: one process
        result = training.train(settings, Bars(), fit_config=fit_config, framework=framework)
    else:
        with process_group() as rank:
            result = training.train(settings, Bars(disable=rank != 0), fit_config=fit_config)
    if result is None:  # a helper rank under torchrun: rank 0 reports
        return
    show_metrics(result.metrics)
    uri = redact(tracking_of(settings).resolved_uri)
    from training.tracking import experiment_page  # MLflow: imported once logging is set up

    page = experiment_page("http://127.0.0.1:5000", result.experiment_id)
    console.print(f"MLflow run {result.run_id} in {uri}")
    console.print(f"see it with: mlflow ui --backend-store-uri {uri}, then {page}")


def tune_command(
    ctx: typer.Context,
    trials: Annotated[
        int | None, typer.Option(min=1, help="finished trials the study aims for (resumable)")
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="the most epochs per trial")] = None,
    sample: Annotated[
        float | None,
        typer.Option(min=0.01, max=1.0, help="the share of the training rows each trial trains on"),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="processes started here, sharing the cores")
    ] = None,
    pruner: Annotated[
        Literal["hyperband", "successive_halving", "none"] | None, typer.Option()
    ] = None,
    study: Annotated[str | None, typer.Option(help="the study's name")] = None,
    framework: FrameworkOption = "torch",
) -> None:
    """Search hyperparameters with Optuna (TPE + pruning); one nested MLflow run per trial.

    Several `mlops tune` processes share one study through MLOPS_OPTUNA_STORAGE=postgresql://...
    `--framework lightgbm` searches the trees' space, in the study `<study>-lightgbm` unless
    `--study` names one (`--epochs` is the network's: trees stop early on their own);
    `--framework jax` (or `tf`) searches the network's space in JAX (TensorFlow), in
    `<study>-jax` (`<study>-tf`).
    """
    from mlops.flows import training

    config = tune_of(
        ctx.obj,
        trials=trials,
        epochs=epochs,
        sample=sample,
        workers=workers,
        pruner=pruner,
        study=study,
        framework=framework,
    )
    result = training.tune(ctx.obj, Bars(), config)
    counts = ", ".join(f"{n} {state}" for state, n in result.counts.items())
    console.print(f"study {result.study}: {counts}; best valid loss {result.best_valid_loss:.4f}")
    for name, value in result.best_params.items():
        console.print(f"  {name}: {value}")
    console.print(f"MLflow parent run {result.parent_run_id}")


def evaluate_command(ctx: typer.Context, run_id: RunOption = None) -> None:
    """Score a run's model and the champion on the newest holdout; changes nothing."""
    from mlops.flows import training

    found = training.evaluate(ctx.obj, run_id)
    console.print(
        f"run {found.run_id}: ROC-AUC {found.auc:.4f}, log loss {found.log_loss:.4f} "
        f"on {found.holdout_rows:,} flights"
    )
    if found.champion_version is None:
        console.print("no champion yet: `mlops promote` would make this model the champion")
        return
    console.print(
        f"champion v{found.champion_version}: ROC-AUC {found.champion_auc:.4f}, "
        f"log loss {found.champion_log_loss:.4f}"
    )


def promote_command(
    ctx: typer.Context,
    run_id: RunOption = None,
    min_auc_gain: Annotated[
        float | None, typer.Option(help="ROC-AUC gain required over the champion")
    ] = None,
    require_promotion: Annotated[
        bool, typer.Option(help="exit with code 4 when the gate keeps the champion")
    ] = False,
) -> None:
    """Register the model and move `champion` to it only if it beats the champion on the holdout."""
    from mlops.flows import training

    decision = training.promote(ctx.obj, run_id, min_auc_gain, require_promotion)
    console.print(decision_line(decision))
