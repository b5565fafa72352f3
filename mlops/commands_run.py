"""`mlops run`: the whole chain on embedded defaults."""

from __future__ import annotations

import typer

from mlops.cli import app, console, fail
from mlops.flows import run_features, run_ingest
from pipelines.errors import PipelineError
from pipelines.ingest import MonthWindow


@app.command("run")
def run_command(ctx: typer.Context) -> None:
    """Everything on embedded defaults: ingest the bundled data, then build the features."""
    try:
        run_ingest(ctx.obj, console, {}, MonthWindow())
        report = run_features(ctx.obj, console)
    except PipelineError as error:
        raise fail(error) from error
    console.print(
        f"[bold green]done[/]: the feature table and spec are under {report.features.parent}"
    )
