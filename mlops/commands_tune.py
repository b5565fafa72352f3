"""`mlops tune`: an Optuna study over the network's hyperparameters, tracked in MLflow."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

import typer

from mlops.cli import app, console, fail
from mlops.flows import layout_of, progress_bar, require_features, tracking_of
from mlops.settings import Settings
from pipelines.errors import PipelineError

if TYPE_CHECKING:
    from training.tune import TuneConfig, TuneResult


def tune_config(settings: Settings, **overrides: object) -> TuneConfig:
    from training.tune import TuneConfig

    values = settings.tune.model_dump() | {"storage": settings.optuna_storage}
    return TuneConfig(**(values | {k: v for k, v in overrides.items() if v is not None}))


def run_tuning(settings: Settings, config: TuneConfig) -> TuneResult:
    """The study to its budget, with a progress bar of finished trials."""
    from training.fit import FitConfig
    from training.tune import tune

    layout = layout_of(settings)
    with progress_bar(console) as progress:
        bar = progress.add_task(f"tuning study {config.study}", total=config.trials)

        def advance(finished: int) -> None:
            progress.update(bar, completed=min(finished, config.trials))

        return tune(
            layout,
            tracking_of(settings),
            config,
            FitConfig(**settings.fit.model_dump()),
            advance,
        )


@app.command("tune")
def tune_command(
    ctx: typer.Context,
    trials: Annotated[
        int | None, typer.Option(min=1, help="finished trials the study aims for (resumable)")
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="the most epochs per trial")] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="processes started here, sharing the cores")
    ] = None,
    pruner: Annotated[
        Literal["hyperband", "successive_halving", "none"] | None, typer.Option()
    ] = None,
    study: Annotated[str | None, typer.Option(help="the study's name")] = None,
) -> None:
    """Search hyperparameters with Optuna (TPE + pruning); one nested MLflow run per trial.

    Several `mlops tune` processes share one study through MLOPS_OPTUNA_STORAGE=postgresql://...
    """
    settings: Settings = ctx.obj
    config = tune_config(
        settings, trials=trials, epochs=epochs, workers=workers, pruner=pruner, study=study
    )
    try:
        require_features(layout_of(settings))
        result = run_tuning(settings, config)
    except (PipelineError, RuntimeError) as error:
        raise fail(error) from error
    counts = ", ".join(f"{n} {state}" for state, n in result.counts.items())
    console.print(f"study {result.study}: {counts}; best valid loss {result.best_valid_loss:.4f}")
    for name, value in result.best_params.items():
        console.print(f"  {name}: {value}")
    console.print(f"MLflow parent run {result.parent_run_id}")
