"""`mlops evaluate` and `mlops promote`: the challenger against the champion on one holdout."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from mlops.cli import app, console, fail
from mlops.flows import layout_of, tracking_of
from mlops.settings import Settings
from pipelines.errors import PipelineError

if TYPE_CHECKING:
    import pandas as pd

    from training.registry import Decision, GateConfig


def _latest_run(experiment_id: str) -> str:
    import mlflow

    runs = mlflow.search_runs(
        [experiment_id],
        "attributes.status = 'FINISHED' and tags.onnx_sha256 != ''",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if not runs:
        raise fail(PipelineError("no finished training run with a model: run `mlops train` first"))
    return runs[0].info.run_id


def _run_and_holdout(settings: Settings, run_id: str | None) -> tuple[str, pd.DataFrame]:
    """Point MLflow at the store; the run (default: the latest) and the newest holdout."""
    from pipelines.storage import read_parquet_folder
    from training.tracking import use_tracking

    experiment_id = use_tracking(tracking_of(settings))
    run_id = run_id or _latest_run(experiment_id)
    return run_id, read_parquet_folder(layout_of(settings).split("test"))


def gate_of(settings: Settings, min_auc_gain: float | None = None) -> GateConfig:
    from training.registry import GateConfig

    values = settings.gate.model_dump()
    return GateConfig(**(values | ({} if min_auc_gain is None else {"min_auc_gain": min_auc_gain})))


def run_promotion(
    settings: Settings, run_id: str | None, min_auc_gain: float | None = None
) -> Decision:
    """Register the run's model; the alias moves only if it beats the champion."""
    from training.registry import promote

    run_id, holdout = _run_and_holdout(settings, run_id)
    decision = promote(run_id, holdout, gate_of(settings, min_auc_gain))
    verdict = (
        "[bold green]promoted[/]" if decision.promoted else "[bold yellow]kept the champion[/]"
    )
    console.print(f"{verdict}: version {decision.version}: {decision.reason}")
    return decision


@app.command("evaluate")
def evaluate_command(
    ctx: typer.Context,
    run_id: Annotated[str | None, typer.Option(help="the run (default: the latest)")] = None,
) -> None:
    """Score a run's model and the champion on the newest holdout; changes nothing."""
    from mlflow import MlflowClient

    from training.registry import champion_of, score

    settings: Settings = ctx.obj
    run_id, holdout = _run_and_holdout(settings, run_id)
    client = MlflowClient()
    auc, loss = score(run_id, holdout, client)
    console.print(
        f"run {run_id}: ROC-AUC {auc:.4f}, log loss {loss:.4f} on {len(holdout):,} flights"
    )
    champion = champion_of(client, gate_of(settings))
    if champion is None:
        console.print("no champion yet: `mlops promote` would make this model the champion")
        return
    champion_auc, champion_loss = score(champion.run_id, holdout, client)
    console.print(
        f"champion v{champion.version}: ROC-AUC {champion_auc:.4f}, log loss {champion_loss:.4f}"
    )


@app.command("promote")
def promote_command(
    ctx: typer.Context,
    run_id: Annotated[
        str | None, typer.Option(help="the run to promote (default: the latest)")
    ] = None,
    min_auc_gain: Annotated[
        float | None, typer.Option(help="ROC-AUC gain required over the champion")
    ] = None,
) -> None:
    """Register the model and move `champion` to it only if it beats the champion on the holdout."""
    run_promotion(ctx.obj, run_id, min_auc_gain)
