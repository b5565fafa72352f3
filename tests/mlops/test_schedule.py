"""`mlops schedule`'s alert webhook, against the real command: Alertmanager's notifications
start a retrain (the cron's job: its lock and gate), once per cooldown, across a restart; only
with the token; every verdict counted in its /metrics."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlops.locks import FileWriterLock
from pipelines.layout import DataLayout
from tests.prediction_logs import served_and_landed
from tests.processes import clean_env, free_port

TOKEN = "alert-test-token"
NEVER = "0 0 1 1 *"  # the cron: once a year, not during the test


def notification(*alerts: tuple[str, str, str | None]) -> dict:
    """Alertmanager's webhook body (version 4): (alertname, status, action label)."""
    return {
        "version": "4",
        "groupKey": "{}:{}",
        "status": "firing" if any(s == "firing" for _, s, _ in alerts) else "resolved",
        "receiver": "scheduler",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "truncatedAlerts": 0,
        "alerts": [
            {
                "status": status,
                "labels": {"alertname": name, **({"action": action} if action else {})},
                "annotations": {"summary": name},
                "startsAt": "2026-12-04T10:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph",
                "fingerprint": "c0ffee",
            }
            for name, status, action in alerts
        ],
    }


@contextmanager
def scheduler(home: Path, **env: str) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mlops", "schedule", "--cron", NEVER],
        env=clean_env(
            MLOPS_HOME=str(home),
            MLOPS_SCHEDULE__PORT=str(port),
            MLOPS_SCHEDULE__WEBHOOK_TOKEN=TOKEN,
            **env,
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{base}/healthz", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                assert process.poll() is None, process.communicate()[0]
                assert time.monotonic() < deadline, "the scheduler did not answer in 60 s"
                time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        output = process.communicate(timeout=60)[0]
        assert process.returncode == 0, output


def counters(base: str) -> dict[tuple[str, str], float]:
    """`_total` samples by name and their labels' values, joined in name order."""
    out = {}
    for family in text_string_to_metric_families(httpx.get(f"{base}/metrics").text):
        for sample in family.samples:
            if sample.name.endswith("_total"):
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[(sample.name, labels)] = sample.value
    return out


def post(base: str, body: dict, token: str | None = TOKEN) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.post(f"{base}/v1/alerts", json=body, headers=headers, timeout=10)


def test_an_alert_asking_for_a_retrain_starts_one_per_cooldown_across_a_restart(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"  # no data: the retrain the alert starts fails at once, counted
    asking = notification(("MLOpsRealizedAucLow", "firing", "retrain"))
    with scheduler(home, MLOPS_SCHEDULE__ALERT_COOLDOWN_S="3600") as base:
        assert post(base, asking, token=None).status_code == 401
        assert post(base, asking, token="wrong").status_code == 401
        assert post(base, {"alerts": "many"}).status_code == 422
        other = notification(
            ("MLOpsLatencyHigh", "firing", None), ("MLOpsCalibrationOff", "resolved", "retrain")
        )
        assert post(base, other).json()["retrain"] == "ignored"  # none firing asks for one
        answer = post(base, asking)
        assert answer.status_code == 202, answer.text
        assert answer.json() == {
            "retrain": "started",
            "alerts": ["MLOpsRealizedAucLow"],
            "detail": "the retrain job is queued",
        }
        deadline = time.monotonic() + 60
        while counters(base).get(("mlops_retrain_runs_total", "outcome=failed,trigger=alert")) != 1:
            assert time.monotonic() < deadline, counters(base)
            time.sleep(0.3)
        assert post(base, asking).json()["retrain"] == "cooldown"  # a flapping alert
        seen = counters(base)
        assert seen[("mlops_retrain_alerts_total", "verdict=started")] == 1
        assert seen[("mlops_retrain_alerts_total", "verdict=cooldown")] == 1
        assert seen[("mlops_retrain_alerts_total", "verdict=ignored")] == 1
    with scheduler(home, MLOPS_SCHEDULE__ALERT_COOLDOWN_S="3600") as base:  # a restart
        assert post(base, asking).json()["retrain"] == "cooldown"
    with scheduler(home, MLOPS_SCHEDULE__ALERT_COOLDOWN_S="0") as base:  # the cooldown over
        assert post(base, asking).json()["retrain"] == "started"


def wait_for_count(base: str, key: tuple[str, str], count: float, within_s: float = 60) -> None:
    deadline = time.monotonic() + within_s
    while counters(base).get(key) != count:
        assert time.monotonic() < deadline, counters(base)
        time.sleep(0.3)


@pytest.mark.slow
def test_an_alerts_retrain_waits_out_a_sinks_batch_and_one_never_begun_keeps_no_cooldown(
    tmp_path: Path,
) -> None:
    """The stack's sink takes the data lock for each batch it writes: a live replay keeps it
    taken in moments, and an alert's retrain that skipped at once lost its turn for 6 hours."""
    asking = notification(("MLOpsCalibrationOff", "firing", "retrain"))
    failed = ("mlops_retrain_runs_total", "outcome=failed,trigger=alert")  # no data: it ran
    skipped = ("mlops_retrain_runs_total", "outcome=skipped,trigger=alert")
    home = tmp_path / "waits"
    sink = FileWriterLock("mlops sink (a batch)", home)
    env = {"MLOPS_SCHEDULE__ALERT_COOLDOWN_S": "3600", "MLOPS_SCHEDULE__LOCK_WAIT_S": "30"}
    with scheduler(home, **env) as base:
        assert sink.try_acquire()
        assert post(base, asking).json()["retrain"] == "started"
        time.sleep(3)
        sink.release()
        wait_for_count(base, failed, 1)
        assert skipped not in counters(base)
    home = tmp_path / "skips"
    sink = FileWriterLock("mlops sink (a batch)", home)
    with scheduler(home, **(env | {"MLOPS_SCHEDULE__LOCK_WAIT_S": "1"})) as base:
        assert sink.try_acquire()  # past the tick's wait: skipped
        assert post(base, asking).json()["retrain"] == "started"
        wait_for_count(base, skipped, 1)
        sink.release()
        assert post(base, asking).json()["retrain"] == "started", "no cooldown: none began"
        wait_for_count(base, failed, 1)
        assert post(base, asking).json()["retrain"] == "cooldown"


@pytest.mark.slow
def test_the_scheduler_tracks_the_served_models_realized_quality_on_its_crontab(
    tmp_path: Path,
) -> None:
    """The stack's arrangement: the log is the API's (its own home), the scheduler reads it
    through MLOPS_PREDICTIONS__FOLDER and __OUTCOMES and writes the series to its MLflow."""
    from mlflow import MlflowClient

    from training.config import TrackingConfig

    served = served_and_landed(DataLayout(tmp_path / "api"))
    home = tmp_path / "scheduler"
    with scheduler(
        home,
        MLOPS_SCHEDULE__MONITOR_CRON="* * * * *",  # the next minute: within 60 s
        MLOPS_PREDICTIONS__FOLDER=str(served.folder),
        MLOPS_PREDICTIONS__OUTCOMES=str(served.outcomes),
    ) as base:
        deadline = time.monotonic() + 90
        while (seen := counters(base)).get(("mlops_monitor_runs_total", "outcome=tracked"), 0) < 1:
            assert ("mlops_monitor_runs_total", "outcome=failed") not in seen, seen
            assert time.monotonic() < deadline, seen
            time.sleep(1)
    client = MlflowClient(TrackingConfig(home).resolved_uri)
    (run,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="tags.`mlops.monitor` = '1'",
    )
    assert run.info.run_name == "monitor flight-delay v1"
    auc = client.get_metric_history(run.info.run_id, "realized_roc_auc")
    assert auc and all(0.6 < m.value <= 1 for m in auc), "probabilities that rank the delays"
    pictures = [a.path for a in client.list_artifacts(run.info.run_id, "monitoring")]
    assert pictures == ["monitoring/realized.png"]
