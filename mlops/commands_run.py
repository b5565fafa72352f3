"""`mlops run`: the whole chain on embedded defaults."""

from __future__ import annotations

from typing import Annotated

import typer

from mlops.cli import app, console, fail
from mlops.commands_data import month_option
from mlops.commands_promote import run_promotion
from mlops.commands_train import fit_config_of, print_metrics, run_training
from mlops.commands_tune import run_tuning, tune_config
from mlops.flows import run_features, run_ingest, tracking_of
from mlops.settings import Settings
from pipelines.errors import PipelineError
from pipelines.ingest import MonthWindow
from pipelines.splits import latest_plan


def _has_champion(settings: Settings) -> bool:
    from mlflow import MlflowClient

    from mlops.commands_promote import gate_of
    from training.registry import champion_of

    client = MlflowClient(tracking_of(settings).resolved_uri)
    return champion_of(client, gate_of(settings)) is not None


@app.command("run")
def run_command(
    ctx: typer.Context,
    trials: Annotated[int | None, typer.Option(min=1, help="the tuning budget")] = None,
    tune_epochs: Annotated[int | None, typer.Option(min=1, help="the most epochs a trial")] = None,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="the most epochs of the final fit")
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            help="take in data up to this month (YYYY-MM); test on it, validate on the one before",
            callback=month_option,
        ),
    ] = None,
    skip_if_champion: Annotated[
        bool, typer.Option(help="do nothing when the registry already has a champion")
    ] = False,
) -> None:
    """Everything on embedded defaults: data, tune, train the best, export, register, promote."""
    from training.tune import best_configs

    settings: Settings = ctx.obj
    if skip_if_champion and _has_champion(settings):
        gate = settings.gate
        console.print(f"{gate.model_name} already has a {gate.alias}: nothing to do")
        return
    try:
        run_ingest(settings, console, {}, MonthWindow(until=until))
        report = run_features(settings, console, latest_plan(until) if until else None)
        tuned = run_tuning(settings, tune_config(settings, trials=trials, epochs=tune_epochs))
        model_config, fit_config = best_configs(
            tuned.best_params, fit_config_of(settings, epochs=epochs)
        )
        console.print(f"training the best of study {tuned.study}: {tuned.best_params}")
        result = run_training(settings, model_config, fit_config)
        if result is None:
            raise RuntimeError("`mlops run` trains in one process; start DDP with `mlops train`")
        decision = run_promotion(settings, result.run_id)
    except (PipelineError, RuntimeError) as error:
        raise fail(error) from error
    print_metrics(result)
    uri = tracking_of(settings).resolved_uri
    console.print(
        f"[bold green]done[/]: features under {report.features.parent}; "
        f"model {settings.gate.model_name} v{decision.version} "
        f"({'champion' if decision.promoted else 'not promoted'}), run {result.run_id}"
    )
    console.print(
        f"the MLflow UI (runs, the study, the registry): mlflow ui --backend-store-uri {uri}"
        ", then http://127.0.0.1:5000"
    )
    serve = settings.serve
    console.print(
        f"the API on the {settings.gate.alias}: mlops serve, then "
        f"http://{serve.host}:{serve.port}/docs (POST /predict, /invocations, /v2/...)"
    )
