"""`mlops replay`: bronze months as live events to a running server, and the predictions'
realized quality."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mlops.commands import month_option
from mlops.console import Bars, console


def replay_command(
    ctx: typer.Context,
    since: Annotated[
        str, typer.Option(help="YYYY-MM, the first month", callback=month_option)
    ] = "2013-11",
    until: Annotated[
        str, typer.Option(help="YYYY-MM, the last month", callback=month_option)
    ] = "2013-12",
    url: Annotated[str, typer.Option(help="the server")] = "http://127.0.0.1:8000",
    speed: Annotated[
        float, typer.Option(min=0, help="replay minutes per second (0: as fast as it answers)")
    ] = 0.0,
    late_by: Annotated[
        float,
        typer.Option(
            min=0,
            max=240,
            help="minutes every replayed flight arrives later than it did (a degraded replay)",
        ),
    ] = 0.0,
) -> None:
    """Send months of bronze to a server as events in observed-time order (MLOPS_EVENTS__TOKEN),
    predict each flight at its scheduled departure on the replay clock, score them on arrival.

    The server's store must take over before the first month: MLOPS_EVENTS__SINCE=2013-11-01."""
    from mlops.flows.replay import replay

    report = replay(ctx.obj, Bars(), url, since, until, speed, late_by)
    console.print(
        f"{report.events:,} events in {report.seconds:.1f} s "
        f"({report.events / max(report.seconds, 1e-9):,.0f}/s): {report.accepted:,} accepted, "
        f"{report.duplicates:,} already in, {report.refused:,} refused"
    )
    stale = ", ".join(f"{source} {count:,}" for source, count in sorted(report.stale.items()))
    console.print(f"{report.predicted:,} flights predicted at departure; stale: {stale or 'none'}")
    console.print(
        f"realized on {report.labelled:,} arrivals: ROC-AUC {report.auc:.4f}, "
        f"log loss {report.log_loss:.4f}"
    )


def sink_command(
    ctx: typer.Context,
    follow: Annotated[
        bool, typer.Option("--follow", help="keep writing new events until stopped")
    ] = False,
    batch: Annotated[int, typer.Option(min=1, help="events per batch, at most")] = 20_000,
) -> None:
    """Write the events the server accepted to bronze, as ingest would have written them: from
    its Redis stream (MLOPS_EVENTS__STREAM_URL) or its local log (MLOPS_HOME/events/log.jsonl).

    A flight becomes a bronze row once its outcome is in (arrived, cancelled, diverted); a
    weather hour at once. Each event is written once, across restarts and kill -9; the stream
    is trimmed behind what is written and what a restarting server still needs."""
    from mlops.flows.sink import sink
    from pipelines.sink import SinkCounts

    def report(counts: SinkCounts, totals: SinkCounts) -> None:
        console.print(
            f"{counts.events:,} events: {counts.flights:,} flights and {counts.weather:,} "
            f"weather hours to bronze, {counts.quarantined:,} quarantined, "
            f"{counts.duplicates:,} already in; {totals.waiting:,} flights wait for an outcome"
        )

    done = sink(ctx.obj, follow, batch, on_batch=report)
    console.print(
        f"sink: {done.events:,} events read, {done.flights:,} flights and {done.weather:,} "
        f"weather hours written, {done.quarantined:,} quarantined, {done.duplicates:,} already in"
    )


def monitor_command(
    ctx: typer.Context,
    track: Annotated[
        bool, typer.Option(help="log each version's daily series to an MLflow run")
    ] = True,
    figure: Annotated[Path | None, typer.Option(help="draw the daily series to this PNG")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="the figures as one JSON object on stdout")
    ] = False,
) -> None:
    """The served model's realized quality, from the prediction log and the arrivals the server
    applied (MLOPS_HOME/data/predictions, .../outcomes): per version, the figures the server's
    /metrics exports (mlops_realized_*) and a series per day of arrival."""
    from mlops.flows.monitor import monitor

    report = monitor(ctx.obj, track, figure)
    if as_json:
        typer.echo(json.dumps(report.summary()))
        return
    newest = "none" if report.newest is None else str(report.newest)
    console.print(
        f"{report.predictions:,} predictions logged, {report.outcomes:,} arrivals, "
        f"{report.matured:,} matured (one per version and flight); newest arrival {newest}"
    )
    table = Table("version", "window", "matured", "ROC-AUC", "log loss", "mean p", "delay rate")
    for r in report.windows:
        table.add_row(
            r.version,
            r.window,
            f"{r.predictions:,}",
            f"{r.roc_auc:.4f}",
            f"{r.log_loss:.4f}",
            f"{r.mean_probability:.4f}",
            f"{r.delay_rate:.4f}",
        )
    console.print(table)
    for version, run in report.runs.items():
        console.print(f"v{version}: daily series in MLflow run {run}")
    if report.figure is not None:
        console.print(f"picture: {report.figure}")
