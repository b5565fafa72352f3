"""`mlops replay`: bronze months as live events to a running server, and the predictions'
realized quality."""

from __future__ import annotations

from typing import Annotated

import typer

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
) -> None:
    """Send months of bronze to a server as events in observed-time order (MLOPS_EVENTS__TOKEN),
    predict each flight at its scheduled departure on the replay clock, score them on arrival.

    The server's store must take over before the first month: MLOPS_EVENTS__SINCE=2013-11-01."""
    from mlops.flows.replay import replay

    report = replay(ctx.obj, Bars(), url, since, until, speed)
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
