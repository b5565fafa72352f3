"""`mlops schedule`: retrains on a cron and when an alert asks for one, over one APScheduler.

The cron (RETRAIN_CRON) and the alert webhook (`POST /v1/alerts`, Alertmanager's webhook
format, behind a bearer token) start the same job, `mlops.flows.retrain.scheduled_retrain`:
one retrain at a time in this process (the job's single instance) and across schedulers (the
data lock, which a second one finds busy and skips), and the same gate, so a retrain an alert
started promotes only a better model. A firing alert labelled `action="retrain"` starts one
unless another alert started one less than `alert_cooldown_s` ago (kept in
MLOPS_HOME/alert-retrain.json, so a restart does not reset it): a flapping alert cannot start
a retrain storm. Every tick and every alert is logged and counted in `/metrics`. On its own
crontab (MLOPS_SCHEDULE__MONITOR_CRON, hourly) it runs `mlops monitor`, so the MLflow UI
charts each served version's realized quality without anyone asking.
"""

# No `from __future__ import annotations`: FastAPI reads the annotations of the routes made in
# `RetrainService.app`, where its names are local.
import contextlib
import hmac
import json
import logging
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from pipelines.storage import write_bytes_atomic

if TYPE_CHECKING:
    from apscheduler.triggers.cron import CronTrigger
    from fastapi import FastAPI

    from mlops.settings import ScheduleConfig, Settings

logger = logging.getLogger(__name__)

STATE_FILE = "alert-retrain.json"
RETRAIN_ACTION = "retrain"  # the label value (`action`) of the alerts that ask for one


class Alert(BaseModel):
    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class AlertBatch(BaseModel):
    """Alertmanager's webhook body (version 4); what this service reads of it."""

    status: Literal["firing", "resolved"]
    alerts: list[Alert] = Field(max_length=10_000)


class Verdict(BaseModel):
    retrain: Literal["started", "cooldown", "running", "ignored"]
    alerts: list[str]  # the firing alerts that asked for it
    detail: str


def _crontab(name: str, expression: str) -> "CronTrigger":
    from apscheduler.triggers.cron import CronTrigger

    try:
        return CronTrigger.from_crontab(expression)
    except ValueError as error:
        raise ValueError(f"{name} {expression!r}: {error}") from None


class RetrainService:
    def __init__(self, settings: "Settings", cron: str) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.settings = settings
        self.config: ScheduleConfig = settings.schedule
        self.cron = cron
        self.trigger = _crontab("RETRAIN_CRON", cron)
        monitor_cron = self.config.monitor_cron
        self.monitor_trigger = (
            _crontab("MLOPS_SCHEDULE__MONITOR_CRON", monitor_cron) if monitor_cron else None
        )
        self.scheduler = BackgroundScheduler()
        self.registry = CollectorRegistry()
        self.runs = Counter(
            "mlops_retrain_runs",
            "Retrain ticks by what started them (cron, alert) and their outcome",
            ["trigger", "outcome"],
            registry=self.registry,
        )
        self.alerts = Counter(
            "mlops_retrain_alerts",
            "Alertmanager notifications by verdict: started, cooldown, running, ignored",
            ["verdict"],
            registry=self.registry,
        )
        self.running = Gauge(
            "mlops_retrain_running", "1 while a retrain runs here", registry=self.registry
        )
        self.last_alert_start = Gauge(
            "mlops_retrain_last_alert_start_timestamp_seconds",
            "When an alert last started a retrain (0: never)",
            registry=self.registry,
        )
        self.monitors = Counter(
            "mlops_monitor_runs",
            "`mlops monitor` runs by outcome: tracked, no_data (nothing logged or matured), failed",
            ["outcome"],
            registry=self.registry,
        )
        self._lock = threading.Lock()
        self._busy = False
        self._state = settings.home / STATE_FILE
        self._before = 0.0  # the alert start before the last one
        self.last_alert_start.set(self._read_state())

    def start(self) -> None:
        self.scheduler.add_job(
            self._tick, self.trigger, args=["cron"], max_instances=1, coalesce=True, id="cron"
        )
        if self.monitor_trigger is not None:
            self.scheduler.add_job(
                self.monitor, self.monitor_trigger, max_instances=1, coalesce=True, id="monitor"
            )
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.shutdown(wait=False)

    def _tick(self, trigger: str, alerts: list[str] | None = None) -> str:
        from mlops.flows.retrain import scheduled_retrain

        with self._lock:
            if self._busy:
                outcome = "skipped"
                logger.info("%s tick: a retrain is running here already", trigger)
                self.runs.labels(trigger, outcome).inc()
                return outcome
            self._busy = True
        self.running.set(1)
        logger.info("retrain (%s) started", trigger)
        try:
            outcome = scheduled_retrain(self.settings, trigger, alerts or ())
        finally:
            with self._lock:
                self._busy = False
            self.running.set(0)
        if trigger == "alert" and outcome == "skipped":  # it never began: the cooldown neither
            self._forget_alert_start()
        self.runs.labels(trigger, outcome).inc()
        logger.info("retrain (%s): %s", trigger, outcome)
        return outcome

    def monitor(self) -> str:
        """`mlops monitor`: the realized quality of what was served, each version's daily
        series to its MLflow run. A failure is logged and counted; the next run tries again."""
        from mlops.flows.monitor import monitor
        from pipelines.errors import NoDataError

        try:
            with tempfile.TemporaryDirectory() as tmp:  # the picture goes to each run
                report = monitor(self.settings, track=True, figure=Path(tmp) / "realized.png")
        except NoDataError as nothing:
            outcome, detail = "no_data", str(nothing)
        except Exception as error:  # MLflow down, a log being written: the next run
            logger.exception("monitor failed")
            outcome, detail = "failed", f"{type(error).__name__}: {error}"
        else:
            outcome = "tracked" if report.runs else "no_data"
            detail = f"{report.matured:,} of {report.predictions:,} predictions matured"
            detail += f", runs {report.runs}" if report.runs else ""
        self.monitors.labels(outcome).inc()
        logger.info("monitor: %s (%s)", outcome, detail)
        return outcome

    def on_alerts(self, batch: AlertBatch) -> Verdict:
        asking = sorted(
            {
                alert.labels.get("alertname", "?")
                for alert in batch.alerts
                if alert.status == "firing" and alert.labels.get("action") == RETRAIN_ACTION
            }
        )
        verdict = self._decide(asking)
        self.alerts.labels(verdict.retrain).inc()
        logger.info("alerts %s: %s (%s)", asking or "none asking", verdict.retrain, verdict.detail)
        return verdict

    def _decide(self, asking: list[str]) -> Verdict:
        if not asking:
            return Verdict(retrain="ignored", alerts=[], detail="no firing alert asks for one")
        with self._lock:
            if self._busy:
                return Verdict(retrain="running", alerts=asking, detail="a retrain is running")
            last = self._read_state()
            since = time.time() - last
            if since < self.config.alert_cooldown_s:
                left = self.config.alert_cooldown_s - since
                return Verdict(
                    retrain="cooldown",
                    alerts=asking,
                    detail=f"an alert started one {since:.0f} s ago; the next in {left:.0f} s",
                )
            self._before = last
            now = time.time()
            write_bytes_atomic(json.dumps({"started": now, "alerts": asking}).encode(), self._state)
            self.last_alert_start.set(now)
        self.scheduler.add_job(self._tick, args=["alert", asking], max_instances=1)  # now
        return Verdict(retrain="started", alerts=asking, detail="the retrain job is queued")

    def _forget_alert_start(self) -> None:
        """Back to the start before this one, so the next notification can start one."""
        with self._lock:
            before = {"started": self._before, "alerts": []}
            write_bytes_atomic(json.dumps(before).encode(), self._state)
            self.last_alert_start.set(self._before)

    def _read_state(self) -> float:
        try:
            return float(json.loads(self._state.read_text())["started"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return 0.0

    def app(self) -> "FastAPI":
        from fastapi import Depends, FastAPI, HTTPException, Request, Response
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        @contextlib.asynccontextmanager
        async def lifespan(app: "FastAPI") -> AsyncIterator[None]:
            self.start()
            try:
                yield
            finally:
                self.stop()

        app = FastAPI(title="mlops scheduler", lifespan=lifespan, openapi_url=None)
        token = self.config.webhook_token

        def authorized(request: Request) -> None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                raise HTTPException(401, "a bearer token (MLOPS_SCHEDULE__WEBHOOK_TOKEN) is needed")

        @app.get("/metrics")
        def metrics() -> Response:
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

        @app.get("/healthz")
        def healthz() -> dict[str, Any]:
            return {
                "cron": self.cron,
                "monitor_cron": self.config.monitor_cron,
                "running": self._busy,
                "webhook": bool(token),
            }

        if token:

            @app.post("/v1/alerts", status_code=202, dependencies=[Depends(authorized)])
            def alerts(batch: AlertBatch) -> Verdict:
                return self.on_alerts(batch)

        return app
