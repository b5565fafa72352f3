"""`mlops retrain`: the newest month in, a drift report, a challenger, the gate.

1. Take in the month after the newest one in bronze (in the demo, the next month of 2013 from
   the bundled data; `--flights` and friends point at real new files).
2. Rebuild the features with the split moved forward: test on the new month, validate on the
   one before, train on everything earlier.
3. Train a challenger from the study's best parameters (the settings' defaults without a study).
4. Log the drift report to the challenger's run: the PSI of every numerical feature of the new
   month against the champion's training distribution, as metrics, JSON and a plot.
5. Gate: the challenger is registered and takes `champion` only if it beats it on the new month.

Any failure raises before the gate: the champion, its alias and the API are untouched.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from mlops.commands_promote import run_promotion
from mlops.commands_train import fit_config_of, run_training
from mlops.commands_tune import tune_config
from mlops.flows import layout_of, run_features, run_ingest, tracking_of
from mlops.settings import Settings
from pipelines.errors import PipelineError
from pipelines.ingest import MonthWindow
from pipelines.splits import latest_plan, next_month

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrainReport:
    month: str | None
    status: str  # "nothing new", "promoted" or "kept the champion"
    run_id: str | None = None
    version: str | None = None
    psi: dict[str, float] = field(default_factory=dict)


def _warm_start(settings: Settings) -> dict[str, object] | None:
    """The study's best parameters, if there is a study with a complete trial."""
    import optuna

    from training.tune import open_storage

    config = tune_config(settings)
    if not config.storage and not (settings.home / "optuna.db").exists():
        return None
    try:
        study = optuna.load_study(
            study_name=config.study, storage=open_storage(config, settings.home)
        )
        return dict(study.best_params)
    except (KeyError, ValueError):  # no such study, or no complete trial
        return None


def drift_report(settings: Settings, month: str) -> dict[str, float]:
    """PSI of each numerical feature of `month` against the champion's training months."""
    import mlflow
    from mlflow import MlflowClient

    from mlops.commands_promote import gate_of
    from pipelines.spec import FeatureSpec, encode
    from pipelines.storage import read_parquet_folder
    from serving.drift import DriftMonitor
    from training.registry import champion_of

    layout = layout_of(settings)
    spec = FeatureSpec.load(layout.spec)
    champion = champion_of(MlflowClient(), gate_of(settings))
    if champion is not None:
        path = mlflow.artifacts.download_artifacts(
            run_id=champion.run_id, artifact_path="contract/feature_spec.json"
        )
        spec = FeatureSpec.load(Path(path))
    table = read_parquet_folder(layout.split("test"))
    table = table[table["scheduled_departure"].dt.strftime("%Y-%m") == month]
    encoded = encode(table, spec)
    monitor = DriftMonitor(spec, window_rows=max(len(table), 1))
    monitor.update(encoded.numerical, encoded.defaults_used)
    return monitor.report()


def _log_drift(run_id: str, month: str, psi: dict[str, float]) -> None:
    from mlflow import MlflowClient

    from training import plots

    client = MlflowClient()
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


def retrain(settings: Settings, console: Console, sources: Mapping[str, Path]) -> RetrainReport:
    from training.tracking import use_tracking
    from training.tune import best_configs

    layout = layout_of(settings)
    months = layout.months("flights")
    if not months:
        raise PipelineError("no data yet: run `mlops data ingest` (or `mlops run`) first")
    month = next_month(months[-1])
    run_ingest(settings, console, sources, MonthWindow(month, month))
    if month not in layout.months("flights"):
        console.print(f"nothing new: the sources have no flights in {month}")
        return RetrainReport(None, "nothing new")
    run_features(settings, console, latest_plan(month))
    use_tracking(tracking_of(settings))
    psi = drift_report(settings, month)
    best = _warm_start(settings)
    fit_config = fit_config_of(settings)
    if best is not None:
        model_config, fit_config = best_configs(best, fit_config)
        console.print(f"warm start from the study's best parameters: {best}")
    else:
        from training.model import ModelConfig

        model_config = ModelConfig(**settings.model.model_dump())
    result = run_training(settings, model_config, fit_config)
    if result is None:
        raise RuntimeError("retrain runs in one process")
    _log_drift(result.run_id, month, psi)
    worst = sorted(psi.items(), key=lambda kv: -kv[1])[:3]
    console.print(
        f"drift of {month}: " + ", ".join(f"{name} PSI {value:.3f}" for name, value in worst)
    )
    decision = run_promotion(settings, result.run_id)
    status = "promoted" if decision.promoted else "kept the champion"
    return RetrainReport(month, status, result.run_id, decision.version, psi)
