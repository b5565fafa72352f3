"""`mlops retrain`: the newest month in, a drift report, a challenger, the gate.

1. Take in the month after the newest one in bronze (in the demo, the next month of 2013 from
   the bundled data; `--flights` and friends point at real new files), unless the month a
   retrain took in last has no gate decision yet: a month is done when its gate has decided,
   not when it was ingested, so a tick that failed after its ingest is retried by the next.
2. Rebuild the features with the split moved forward: test on the new month, validate on the
   one before, train on everything earlier.
3. Train a challenger of the champion's framework (the network, in PyTorch or JAX, or the
   trees; the PyTorch network without a champion, or when the champion's framework is not
   installed here, with a warning) from that framework's study's best parameters (the
   settings' defaults without a study).
4. Log the drift report to the challenger's run: the PSI of every numerical feature of the new
   month against the champion's training distribution, as metrics, JSON and a plot.
5. Gate: the challenger is registered and takes `champion` only if it beats it on the new month.

Any failure raises before the gate: the champion, its alias and the API are untouched.

Where "decided" lives: the month a retrain takes in is written to MLOPS_HOME/retrain.json
before its ingest (beside the bronze data it describes, so both survive or go together), and
the decision is the gate's own record in MLflow (a run tagged with the month and a
`gate_decision`), read back rather than copied, so a tick that died between the gate and
any bookkeeping of ours is not gated twice, and one whose gate never ran is not skipped.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mlops.configs import layout_of, mlflow_client, tracking_of, tune_of
from mlops.flows.data import build_features, ingest
from mlops.flows.progress import Progress
from mlops.flows.training import promote, train, with_best_trees
from mlops.locks import WriterLock, writer_lock
from mlops.settings import Settings
from pipelines.errors import LockLostError, LockUnavailableError, NoDataError, WriterBusyError
from pipelines.ingest import MonthWindow
from pipelines.splits import latest_plan, next_month
from pipelines.storage import write_bytes_atomic
from training.config import TREES

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrainReport:
    month: str | None
    status: str  # "nothing new", "promoted" or "kept the champion"
    run_id: str | None = None
    version: str | None = None
    psi: dict[str, float] = field(default_factory=dict)
    warm_start: dict[str, object] | None = None  # the study's best parameters, when used
    reason: str = ""  # the gate's
    retried: bool = False  # the month of an earlier retrain whose gate never decided
    framework: str = "torch"  # what made the challenger


# what each framework needs installed (its extra): a retrain falls back to the PyTorch network
REQUIRES = {
    "torch": "torch",
    "jax": "jax2onnx",
    "tf": "tf2onnx",
    "lightgbm": "onnxmltools",
    "catboost": "catboost",
}


def challenger_framework(client: MlflowClient, settings: Settings) -> str:
    """The champion's framework, when it is installed here; else the PyTorch network."""
    from importlib.util import find_spec

    from training.registry import champion_of, framework_of

    champion = champion_of(client, settings.gate)
    if champion is None:
        return "torch"
    framework = framework_of(client.get_run(str(champion.run_id)))
    if framework in REQUIRES and find_spec(REQUIRES[framework]) is not None:
        return framework
    logger.warning(
        "the champion was made by %s, which is not installed here (its extra: pip install "
        "'.[%s]'): the challenger is the PyTorch network",
        framework,
        framework,
    )
    return "torch"


def _warm_start(settings: Settings, framework: str) -> dict[str, object] | None:
    """The framework's study's best parameters, if it has a study with a complete trial."""
    import optuna

    from training.study import open_storage

    config = tune_of(settings, framework=framework)
    if not config.storage and not (settings.home / "optuna.db").exists():
        return None
    try:
        study = optuna.load_study(
            study_name=config.study, storage=open_storage(config, settings.home)
        )
        return dict(study.best_params)
    except (KeyError, ValueError):  # no such study, or no complete trial
        return None


def drift_report(client: MlflowClient, settings: Settings, month: str) -> dict[str, float]:
    """PSI of each numerical feature of `month` against the champion's training months."""
    from pipelines.spec import FeatureSpec, encode
    from pipelines.storage import read_parquet_folder
    from serving.drift import DriftMonitor
    from training.registry import champion_of

    layout = layout_of(settings)
    spec = FeatureSpec.load(layout.spec)
    champion = champion_of(client, settings.gate)
    with tempfile.TemporaryDirectory() as tmp:
        if champion is not None:
            path = client.download_artifacts(
                str(champion.run_id), "contract/feature_spec.json", tmp
            )
            spec = FeatureSpec.load(Path(path))
    table = read_parquet_folder(layout.split("test"))
    table = table[table["scheduled_departure"].dt.strftime("%Y-%m") == month]
    encoded = encode(table, spec)
    monitor = DriftMonitor(spec, window_rows=max(len(table), 1))
    monitor.update(encoded.numerical, encoded.defaults_used)
    return monitor.report()


def _log_drift(client: MlflowClient, run_id: str, month: str, psi: dict[str, float]) -> None:
    from training import plots

    for name, value in psi.items():
        client.log_metric(run_id, f"psi.{name}", value)
    if psi:
        client.log_metric(run_id, "psi_max", max(psi.values()))
    client.log_dict(run_id, psi, "drift/psi.json")
    client.set_tag(run_id, "retrain_month", month)
    with tempfile.TemporaryDirectory() as tmp:
        figure = plots.draw_psi(list(psi), list(psi.values()), f"PSI of {month} vs training")
        plots.save_png(figure, Path(tmp) / "psi.png")
        client.log_artifact(run_id, str(Path(tmp) / "psi.png"), "drift")


def retrain(
    settings: Settings,
    progress: Progress,
    sources: Mapping[str, Path],
    wait_s: float | None = None,
    why: Mapping[str, str] | None = None,
) -> RetrainReport:
    """The month after the newest in bronze: ingest, features, drift, challenger, gate; under
    the data lock (waiting up to `wait_s`, default MLOPS_LOCK_WAIT_S, for another writer).
    `why`: what started it, as tags of the challenger's run (`retrain_trigger`: cli, cron or
    alert; `retrain_alerts`: the alerts that asked)."""
    with writer_lock(settings, "mlops retrain", wait_s, on_wait=progress.note) as lock:
        return _retrain(settings, progress, sources, lock, why or {"retrain_trigger": "cli"})


def _retrain(
    settings: Settings,
    progress: Progress,
    sources: Mapping[str, Path],
    lock: WriterLock,
    why: Mapping[str, str],
) -> RetrainReport:
    from training.tune import best_configs

    layout = layout_of(settings)
    months = layout.months("flights")
    if not months:
        raise NoDataError("no data yet: run `mlops data ingest` (or `mlops run`) first")
    client = mlflow_client(settings)  # unreachable MLflow fails here, before any work
    retried = _undecided_month(client, settings, months)
    month = retried or next_month(months[-1])
    _take_in(settings.home, month)
    if month not in months:  # a retried month is in bronze already: its sources stay as taken
        ingest(settings, progress, sources, MonthWindow(month, month))
    if month not in layout.months("flights"):
        return RetrainReport(None, "nothing new")
    lock.check()
    build_features(settings, progress, latest_plan(month))
    lock.check()
    psi = drift_report(client, settings, month)
    framework = challenger_framework(client, settings)
    best = _warm_start(settings, framework)
    model_config, fit_config = settings.model, settings.fit
    if best is not None and framework in TREES:
        settings = with_best_trees(settings, framework, best)
    elif best is not None:
        model_config, fit_config = best_configs(best, fit_config)
    result = train(
        settings, progress, model_config, fit_config, f"retrain {month}:", framework=framework
    )
    if result is None:
        raise RuntimeError("retrain runs in one process")
    _log_drift(client, result.run_id, month, psi)
    for name, value in why.items():
        client.set_tag(result.run_id, name, value)
    lock.check()  # the gate only for a retrain that held the lock throughout
    decision = promote(settings, result.run_id)
    status = "promoted" if decision.promoted else "kept the champion"
    return RetrainReport(
        month,
        status,
        result.run_id,
        decision.version,
        psi,
        best,
        decision.reason,
        retried=retried is not None,
        framework=framework,
    )


def _pending_file(home: Path) -> Path:
    return home / "retrain.json"


def _take_in(home: Path, month: str) -> None:
    """Record the month this retrain takes in, before anything of it is written."""
    write_bytes_atomic(json.dumps({"month": month}).encode(), _pending_file(home))


def _undecided_month(client: MlflowClient, settings: Settings, months: list[str]) -> str | None:
    """The month the last retrain took in, if it is in bronze and its gate has not decided."""
    try:
        month = json.loads(_pending_file(settings.home).read_text())["month"]
    except FileNotFoundError:
        return None
    if month not in months or gate_decided(client, settings, month):
        return None
    logger.info("retrain of %s never reached its gate's decision: retrying it", month)
    return month


def gate_decided(client: MlflowClient, settings: Settings, month: str) -> bool:
    """Whether a retrain of `month` has a gate decision in MLflow (the gate's own record)."""
    from training.tracking import experiment_id

    runs = client.search_runs(
        [experiment_id(client, tracking_of(settings))],
        f"tags.retrain_month = '{month}' and tags.gate_decision != ''",
        max_results=1,
    )
    return bool(runs)


def scheduled_retrain(settings: Settings, trigger: str = "cron", alerts: Sequence[str] = ()) -> str:
    """One tick of `mlops schedule`: a retrain unless another writer holds the data lock past
    MLOPS_SCHEDULE__LOCK_WAIT_S; its outcome. A failure is logged and the schedule goes on:
    the champion was never touched. `trigger` and `alerts` (what asked for it) go to the
    challenger's run as tags."""
    from mlops.flows.progress import NoProgress

    why = {"retrain_trigger": trigger, **({"retrain_alerts": ",".join(alerts)} if alerts else {})}
    try:
        report = retrain(settings, NoProgress(), {}, settings.schedule.lock_wait_s, why)
    except LockUnavailableError as error:
        logger.error("retrain not started: %s", error)
        return "failed"
    except WriterBusyError as error:
        logger.info("skipping this tick: %s", error)
        return "skipped"
    except LockLostError as error:
        logger.error("retrain stopped before its gate: %s; the next tick takes it again", error)
        return "lock lost"
    except Exception:
        logger.exception("retrain failed: the champion and the API are unchanged")
        return "failed"
    logger.info("retrain of %s: %s (run %s)", report.month, report.status, report.run_id)
    return report.status
