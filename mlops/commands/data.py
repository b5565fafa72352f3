"""`mlops data ...`: ingest, features, synth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlops.commands import PathOption, given_sources, month_option
from mlops.configs import layout_of
from mlops.console import Bars, console, show_features, show_ingest

MonthOption = Annotated[str | None, typer.Option(help="YYYY-MM (inclusive)", callback=month_option)]


def ingest_command(
    ctx: typer.Context,
    flights: PathOption = None,
    weather: PathOption = None,
    planes: PathOption = None,
    airports: PathOption = None,
    airlines: PathOption = None,
    since: MonthOption = None,
    until: MonthOption = None,
) -> None:
    """Validate the sources into bronze Parquet by month; rejected rows go to quarantine."""
    from mlops.flows import data
    from pipelines.ingest import MonthWindow

    sources = given_sources(
        flights=flights, weather=weather, planes=planes, airports=airports, airlines=airlines
    )
    report = data.ingest(ctx.obj, Bars(), sources, MonthWindow(since, until))
    layout = layout_of(ctx.obj)
    show_ingest(report, str(layout.root / "bronze"), str(layout.root / "quarantine"))


def features_command(ctx: typer.Context) -> None:
    """Build the point-in-time feature table, its spec and the online lookups on Dask."""
    from mlops.flows import data

    show_features(data.build_features(ctx.obj, Bars()))


def synth_command(
    ctx: typer.Context,
    rows: Annotated[int, typer.Option(min=1, help="how many flights to generate")],
    out: Annotated[
        Path | None, typer.Option(help="output folder (default MLOPS_HOME/synth/flights-N)")
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Flights-like data at any scale, resampled from the real flights; ingest it with --flights."""
    from mlops.flows import data

    with console.status(f"writing {rows:,} synthetic flights"):
        target, parts = data.synthesize(ctx.obj, rows, out, seed)
    console.print(f"{rows:,} flights in {parts} parts: {target}")
    console.print(f"ingest them with: mlops data ingest --flights {target}")
