"""`mlops run`: the whole chain on embedded defaults."""

from __future__ import annotations

from typing import Annotated

import typer

from mlops.commands import frameworks_option, month_option
from mlops.configs import layout_of, tracking_of, tune_of
from mlops.console import Bars, console, decision_line, show_features, show_ingest, show_metrics
from mlops.settings import Settings
from pipelines.redact import redact


def run_command(
    ctx: typer.Context,
    trials: Annotated[int | None, typer.Option(min=1, help="the tuning budget")] = None,
    tune_epochs: Annotated[int | None, typer.Option(min=1, help="the most epochs a trial")] = None,
    tune_sample: Annotated[
        float | None,
        typer.Option(min=0.01, max=1.0, help="the share of the training rows a trial trains on"),
    ] = None,
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
    frameworks: Annotated[
        str,
        typer.Option(
            help="comma-separated challengers, each tuned, trained and gated: torch, jax, lightgbm",
            callback=frameworks_option,
        ),
    ] = "torch",
) -> None:
    """Everything on embedded defaults: data, tune, train the best, export, register, promote.

    `--frameworks torch,jax,lightgbm` also trains the network in JAX and gradient-boosted trees
    and lets the gate choose: whichever model scores best on the newest holdout ends as the
    champion.
    """
    from mlops.flows.run import run
    from mlops.flows.training import has_champion

    settings: Settings = ctx.obj
    gate = settings.gate
    if skip_if_champion and has_champion(settings):
        console.print(f"{gate.model_name} already has a {gate.alias}: nothing to do")
        return
    layout = layout_of(settings)
    tune_config = tune_of(settings, trials=trials, epochs=tune_epochs, sample=tune_sample)
    report = run(settings, Bars(), tune_config, epochs, until, frameworks.split(","))
    show_ingest(report.ingest, str(layout.root / "bronze"), str(layout.root / "quarantine"))
    show_features(report.features)
    for study, challenger in zip(report.studies, report.challengers, strict=True):
        console.print(f"[bold]{challenger.trained.framework}[/]")
        console.print(f"best of study {study.study}: {study.best_params}")
        show_metrics(challenger.trained.metrics)
        console.print(decision_line(challenger.decision))
    serve = settings.serve
    uri = redact(tracking_of(settings).resolved_uri)
    champion = report.last_champion
    shown = champion or report.challengers[-1]
    outcome = "champion" if champion else "not promoted"
    console.print(
        f"[bold green]done[/]: features under {report.features.features.parent}; "
        f"model {gate.model_name} v{shown.decision.version} ({outcome}) made by "
        f"{shown.trained.framework}, run {shown.trained.run_id}"
    )
    from training.tracking import experiment_page  # MLflow: imported once logging is set up

    page = experiment_page("http://127.0.0.1:5000", report.challengers[-1].trained.experiment_id)
    console.print(
        f"the MLflow UI (runs, the study, the registry): mlflow ui --backend-store-uri {uri}"
        f", then {page}"
    )
    console.print(
        f"the API on the {gate.alias}: mlops serve, then "
        f"http://{serve.host}:{serve.port}/docs (POST /predict, /invocations, /v2/...)"
    )
