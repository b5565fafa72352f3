"""`mlops promote`: register a run's model and let the gate decide on the champion alias."""

from __future__ import annotations

from typing import Annotated

import typer

from mlops.cli import app, console, fail
from mlops.flows import layout_of
from mlops.settings import Settings
from pipelines.errors import PipelineError


@app.command("promote")
def promote_command(
    ctx: typer.Context,
    run_id: Annotated[
        str | None, typer.Option(help="the run to promote (default: the latest)")
    ] = None,
    min_auc_gain: Annotated[
        float, typer.Option(help="ROC-AUC gain required over the champion")
    ] = 0.0,
) -> None:
    """Register the model and move `champion` to it only if it beats the champion on the holdout."""
    import mlflow

    from pipelines.storage import read_parquet_folder
    from training.registry import GateConfig, promote
    from training.tracking import TrackingConfig, use_tracking

    settings: Settings = ctx.obj
    tracking = TrackingConfig(settings.home, settings.mlflow_tracking_uri, settings.experiment)
    experiment_id = use_tracking(tracking)
    if run_id is None:
        runs = mlflow.search_runs(
            [experiment_id],
            "attributes.status = 'FINISHED' and tags.onnx_sha256 != ''",
            order_by=["attributes.start_time DESC"],
            max_results=1,
            output_format="list",
        )
        if not runs:
            raise fail(
                PipelineError("no finished training run with a model: run `mlops train` first")
            )
        run_id = runs[0].info.run_id
    holdout = read_parquet_folder(layout_of(settings).split("test"))
    decision = promote(run_id, holdout, GateConfig(min_auc_gain=min_auc_gain))
    verdict = (
        "[bold green]promoted[/]" if decision.promoted else "[bold yellow]kept the champion[/]"
    )
    console.print(f"{verdict}: version {decision.version}: {decision.reason}")
