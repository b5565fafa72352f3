"""`mlops retrain` and `mlops schedule`: a new month in, a challenger out, on a cron."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer

from mlops.commands import PathOption, given_sources
from mlops.console import Bars, console
from mlops.logs import service_config, service_logging
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
    console.print(
        f"retrain of {report.month}: {report.status} (a {report.framework} challenger, "
        f"run {report.run_id})"
    )


def schedule_command(
    ctx: typer.Context,
    cron: Annotated[
        str | None, typer.Option(help="crontab expression (default: RETRAIN_CRON)")
    ] = None,
    once: Annotated[bool, typer.Option(help="run one tick now and exit")] = False,
) -> None:
    """Run `mlops retrain` on a cron (APScheduler), and when an alert asks for one (POST
    /v1/alerts with MLOPS_SCHEDULE__WEBHOOK_TOKEN); one retrain at a time across schedulers.
    /metrics on MLOPS_SCHEDULE__HOST:PORT (127.0.0.1:8001; port 0: no HTTP server)."""
    from mlops.flows.retrain import scheduled_retrain

    settings: Settings = ctx.obj
    service_logging(settings)
    if once:
        console.print(f"tick: {scheduled_retrain(settings)}")
        return
    from mlops.scheduler import RetrainService

    expression = cron or settings.retrain_cron
    try:
        service = RetrainService(settings, expression)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    lock = "PostgreSQL advisory lock" if settings.lock_url else "file lock"
    config = settings.schedule
    webhook = "the alert webhook POST /v1/alerts" if config.webhook_token else "no alert webhook"
    if not config.port:
        console.print(f"retraining on {expression!r} ({lock}); Ctrl-C stops")
        service.start()
        try:
            threading.Event().wait()
        except (KeyboardInterrupt, SystemExit):
            service.stop()
        return
    import uvicorn

    console.print(
        f"retraining on {expression!r} ({lock}) and on alerts; /metrics and {webhook} on "
        f"http://{config.host}:{config.port}; Ctrl-C stops"
    )
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(
        service.app(),
        host=config.host,
        port=config.port,
        log_config=service_config(settings.log_format, settings.log_level),
        access_log=False,
    )


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)
