"""`mlops data ...`: ingest, features, synth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlops.cli import console, data_app, fail
from mlops.flows import layout_of, run_features, run_ingest
from mlops.settings import Settings
from pipelines.errors import PipelineError

MONTH = r"^\d{4}-\d{2}$"
PathOption = Annotated[
    Path | None, typer.Option(help="CSV/Parquet file or folder (default: bundled)")
]


def given_sources(**paths: Path | None) -> dict[str, Path]:
    """The source options a user gave (`--flights PATH` ...), by table."""
    return {table: path for table, path in paths.items() if path}


def month_option(value: str | None) -> str | None:
    if value is not None and (
        len(value) != 7 or value[4] != "-" or not value.replace("-", "").isdigit()
    ):
        raise typer.BadParameter(f"expected YYYY-MM, got {value!r}")
    return value


@data_app.command("ingest")
def ingest_command(
    ctx: typer.Context,
    flights: PathOption = None,
    weather: PathOption = None,
    planes: PathOption = None,
    airports: PathOption = None,
    airlines: PathOption = None,
    since: Annotated[
        str | None, typer.Option(help="first month to take in, YYYY-MM", callback=month_option)
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="last month to take in, YYYY-MM", callback=month_option)
    ] = None,
) -> None:
    """Validate the sources into bronze Parquet by month; rejected rows go to quarantine."""
    from pipelines.ingest import MonthWindow

    sources = given_sources(
        flights=flights, weather=weather, planes=planes, airports=airports, airlines=airlines
    )
    try:
        run_ingest(ctx.obj, console, sources, MonthWindow(since, until))
    except PipelineError as error:
        raise fail(error) from error


@data_app.command("features")
def features_command(ctx: typer.Context) -> None:
    """Build the point-in-time feature table, its spec and the online lookups on Dask."""
    try:
        run_features(ctx.obj, console)
    except PipelineError as error:
        raise fail(error) from error


@data_app.command("synth")
def synth_command(
    ctx: typer.Context,
    rows: Annotated[int, typer.Option(min=1, help="how many flights to generate")],
    out: Annotated[
        Path | None, typer.Option(help="output folder (default MLOPS_HOME/synth/flights-N)")
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Flights-like data at any scale, resampled from the real flights; ingest it with --flights."""
    import pandas as pd

    from pipelines.sources import bundled_source
    from pipelines.synth import synthesize

    settings: Settings = ctx.obj
    target = out or layout_of(settings).home / "synth" / f"flights-{rows}"
    real = pd.read_csv(bundled_source("flights"))
    with console.status(f"writing {rows:,} synthetic flights"):
        parts = synthesize(real, rows, target, seed=seed)
    console.print(f"{rows:,} flights in {len(parts)} parts: {target}")
    console.print(f"ingest them with: mlops data ingest --flights {target}")
