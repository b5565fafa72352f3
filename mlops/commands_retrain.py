"""`mlops retrain` and `mlops schedule`: a new month in, a challenger out, on a cron."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from mlops.cli import app, console, fail
from mlops.commands_data import PathOption, given_sources
from mlops.settings import Settings
from pipelines.errors import PipelineError

logger = logging.getLogger(__name__)


@app.command("retrain")
def retrain_command(
    ctx: typer.Context,
    flights: PathOption = None,
    weather: PathOption = None,
    planes: PathOption = None,
    airports: PathOption = None,
    airlines: PathOption = None,
) -> None:
    """Take in the next month, report drift, train a challenger, promote it only if better."""
    from mlops.retrain import retrain

    sources = given_sources(
        flights=flights, weather=weather, planes=planes, airports=airports, airlines=airlines
    )
    try:
        report = retrain(ctx.obj, console, sources)
    except PipelineError as error:
        raise fail(error) from error
    if report.month is not None:
        console.print(f"retrain of {report.month}: {report.status} (run {report.run_id})")


def tick(settings: Settings) -> str:
    """One scheduled retrain, if no other scheduler is retraining now: its outcome."""
    from mlops.locks import retrain_lock
    from mlops.retrain import retrain

    with retrain_lock(settings.lock_url, settings.home) as held:
        if not held:
            logger.info("another scheduler holds the retrain lock: skipping this tick")
            return "skipped"
        try:
            return retrain(settings, console, {}).status
        except Exception:  # the schedule goes on; the champion was never touched
            logger.exception("retrain failed: the champion and the API are unchanged")
            return "failed"


@app.command("schedule")
def schedule_command(
    ctx: typer.Context,
    cron: Annotated[
        str | None, typer.Option(help="crontab expression (default: RETRAIN_CRON)")
    ] = None,
    once: Annotated[bool, typer.Option(help="run one tick now and exit")] = False,
) -> None:
    """Run `mlops retrain` on a cron (APScheduler); one retrain at a time across schedulers."""
    settings: Settings = ctx.obj
    if once:
        console.print(f"tick: {tick(settings)}")
        return
    from apscheduler.schedulers.blocking import BlockingScheduler
    from apscheduler.triggers.cron import CronTrigger

    expression = cron or settings.retrain_cron
    try:
        trigger = CronTrigger.from_crontab(expression)
    except ValueError as error:
        raise typer.BadParameter(f"RETRAIN_CRON {expression!r}: {error}") from error
    scheduler = BlockingScheduler()
    scheduler.add_job(tick, trigger, args=[settings], max_instances=1, coalesce=True)
    lock = "PostgreSQL advisory lock" if settings.lock_url else "file lock"
    console.print(f"retraining on {expression!r} ({lock}); Ctrl-C stops")
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        scheduler.shutdown(wait=False)
