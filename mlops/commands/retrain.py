"""`mlops retrain` and `mlops schedule`: a new month in, a challenger out, on a cron."""

from __future__ import annotations

from typing import Annotated

import typer

from mlops.commands import PathOption, given_sources
from mlops.console import Bars, console
from mlops.settings import Settings


def retrain_command(
    ctx: typer.Context,
    flights: PathOption = None,
    weather: PathOption = None,
    planes: PathOption = None,
    airports: PathOption = None,
    airlines: PathOption = None,
) -> None:
    """Take in the next month, report drift, train a challenger, promote it only if better."""
    from mlops.flows.retrain import retrain

    sources = given_sources(
        flights=flights, weather=weather, planes=planes, airports=airports, airlines=airlines
    )
    report = retrain(ctx.obj, Bars(), sources)
    if report.month is None:
        console.print("nothing new: the sources have no flights in the next month")
        return
    if report.retried:
        console.print(
            f"{report.month}: retried, its gate had not decided (an earlier retrain failed)"
        )
    if report.warm_start:
        console.print(f"warm start from the study's best parameters: {report.warm_start}")
    worst = sorted(report.psi.items(), key=lambda kv: -kv[1])[:3]
    console.print(
        f"drift of {report.month}: " + ", ".join(f"{name} PSI {value:.3f}" for name, value in worst)
    )
    console.print(f"gate: {report.reason}")
    console.print(f"retrain of {report.month}: {report.status} (run {report.run_id})")


def schedule_command(
    ctx: typer.Context,
    cron: Annotated[
        str | None, typer.Option(help="crontab expression (default: RETRAIN_CRON)")
    ] = None,
    once: Annotated[bool, typer.Option(help="run one tick now and exit")] = False,
) -> None:
    """Run `mlops retrain` on a cron (APScheduler); one retrain at a time across schedulers."""
    from mlops.flows.retrain import scheduled_retrain

    settings: Settings = ctx.obj
    if once:
        console.print(f"tick: {scheduled_retrain(settings)}")
        return
    from apscheduler.schedulers.blocking import BlockingScheduler
    from apscheduler.triggers.cron import CronTrigger

    expression = cron or settings.retrain_cron
    try:
        trigger = CronTrigger.from_crontab(expression)
    except ValueError as error:
        raise typer.BadParameter(f"RETRAIN_CRON {expression!r}: {error}") from error
    scheduler = BlockingScheduler()
    scheduler.add_job(scheduled_retrain, trigger, args=[settings], max_instances=1, coalesce=True)
    lock = "PostgreSQL advisory lock" if settings.lock_url else "file lock"
    console.print(f"retraining on {expression!r} ({lock}); Ctrl-C stops")
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        scheduler.shutdown(wait=False)
