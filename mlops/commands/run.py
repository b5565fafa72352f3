"""`mlops run`: the whole chain on embedded defaults."""

from __future__ import annotations

from typing import Annotated

import typer

from mlops.commands import month_option
from mlops.configs import layout_of, tracking_of, tune_of
from mlops.console import Bars, console, decision_line, show_features, show_ingest, show_metrics
from mlops.settings import Settings
from pipelines.redact import redact


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
    from mlops.flows.run import run
    from mlops.flows.training import has_champion

    settings: Settings = ctx.obj
    gate = settings.gate
    if skip_if_champion and has_champion(settings):
        console.print(f"{gate.model_name} already has a {gate.alias}: nothing to do")
        return
    layout = layout_of(settings)
    report = run(
        settings, Bars(), tune_of(settings, trials=trials, epochs=tune_epochs), epochs, until
    )
    show_ingest(report.ingest, str(layout.root / "bronze"), str(layout.root / "quarantine"))
    show_features(report.features)
    console.print(f"best of study {report.tuned.study}: {report.tuned.best_params}")
    show_metrics(report.trained.metrics)
    console.print(decision_line(report.decision))
    decision, serve = report.decision, settings.serve
    uri = redact(tracking_of(settings).resolved_uri)
    console.print(
        f"[bold green]done[/]: features under {report.features.features.parent}; "
        f"model {gate.model_name} v{decision.version} "
        f"({'champion' if decision.promoted else 'not promoted'}), run {report.trained.run_id}"
    )
    from training.tracking import experiment_page  # MLflow: imported once logging is set up

    page = experiment_page("http://127.0.0.1:5000", report.trained.experiment_id)
    console.print(
        f"the MLflow UI (runs, the study, the registry): mlflow ui --backend-store-uri {uri}"
        f", then {page}"
    )
    console.print(
        f"the API on the {gate.alias}: mlops serve, then "
        f"http://{serve.host}:{serve.port}/docs (POST /predict, /invocations, /v2/...)"
    )
