"""`mlops monitor`: the served model's realized quality, offline, from the prediction log and
the outcomes the server wrote (`serving.prediction_log`), the same figures the server exports
online (`serving.quality`: one prediction per version and flight, the last served; windows of
event time ending at the newest arrival), and a daily series per model version.

With tracking on, each version's daily series goes to one MLflow run of the training
experiment (`monitor <model> v<version>`, tagged `mlops.monitor`), replaced at each call, so
the UI charts quality over time beside the training runs; the picture of the series is logged
with it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mlops.configs import predictions_of, tracking_of
from mlops.settings import Settings
from pipelines.errors import NoDataError
from pipelines.events import flight_identity, to_minutes
from pipelines.storage import read_parquet_folder
from serving.drift import psi_against
from serving.prediction_log import MODELS
from serving.quality import Realized, summarize, window_name

MONITOR_TAG = "mlops.monitor"  # the version a monitoring run is of
PREDICTED = ["model", "version", "carrier", "flight", "origin", "scheduled_departure", "served_at"]


@dataclass
class MonitorReport:
    predictions: int = 0  # rows in the log
    outcomes: int = 0  # flights landed
    matured: int = 0  # (version, flight) joined
    newest: pd.Timestamp | None = None  # the newest arrival: where the windows end
    windows: list[Realized] = field(default_factory=list)
    daily: pd.DataFrame = field(default_factory=pd.DataFrame)  # version, day, the figures
    models: dict[str, str] = field(default_factory=dict)  # version -> the model's name
    runs: dict[str, str] = field(default_factory=dict)  # version -> its MLflow run id
    figure: Path | None = None

    def summary(self) -> dict:
        """The report as plain values (`mlops monitor --json`)."""
        return {
            "predictions": self.predictions,
            "outcomes": self.outcomes,
            "matured": self.matured,
            "newest": None if self.newest is None else self.newest.isoformat(),
            "windows": [dataclasses.asdict(r) for r in self.windows],
            "daily": [
                {**row, "day": row["day"].date().isoformat()}
                for row in self.daily.to_dict("records")
            ],
            "runs": self.runs,
            "figure": None if self.figure is None else str(self.figure),
        }


def matured(predictions: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    """Per version and flight, the last prediction served (the newest `served_at`; a tie, the
    one written last), joined with the flight's arrival: version, probability, arrived_at
    (New York minutes), delayed."""
    frame = predictions.assign(
        identity=flight_identity(
            predictions["carrier"], predictions["flight"], predictions["origin"]
        ),
        scheduled=to_minutes(predictions["scheduled_departure"]),
    )
    frame = frame.sort_values("served_at", kind="stable").drop_duplicates(
        ["version", "identity", "scheduled"], keep="last"
    )
    landed = outcomes.assign(
        scheduled=to_minutes(outcomes["scheduled_departure"]),
        arrived=to_minutes(outcomes["arrived_at"]),
    ).drop_duplicates(["identity", "scheduled"])  # every worker writes what it applied
    joined = frame.merge(landed, on=["identity", "scheduled"], how="inner")
    return pd.DataFrame(
        {
            "version": joined["version"].astype(str).to_numpy(),
            "probability": joined["delay_probability"].to_numpy("float64"),
            "arrived_at": joined["arrived"].to_numpy("float64"),
            "delayed": joined["delayed"].to_numpy(bool),
        }
    )


def realized(pairs: pd.DataFrame, newest: float, windows_h: Sequence[float]) -> list[Realized]:
    """Each version's figures in each window ending at `newest` (the server's report)."""
    out = []
    for version, group in sorted(pairs.groupby("version"), key=lambda item: str(item[0])):
        for hours in sorted(windows_h):
            inside = group[group["arrived_at"] > newest - hours * 60]
            out.append(
                summarize(
                    str(version),
                    window_name(hours),
                    inside["probability"].to_numpy(),
                    inside["delayed"].to_numpy(),
                )
            )
    return out


def daily(pairs: pd.DataFrame, references: dict[str, dict] | None = None) -> pd.DataFrame:
    """Per version and day of arrival (New York): the figures of the flights that landed
    then, and where the version's reference is known (`references`, the log's `_models`), the
    PSI of their predicted probabilities against its holdout's (`output_psi`)."""
    references = references or {}
    day = pd.to_datetime(pairs["arrived_at"] * 60, unit="s").dt.normalize()
    rows = []
    for (version, when), group in pairs.groupby([pairs["version"], day], sort=True):
        probabilities = group["probability"].to_numpy()
        figures = summarize(str(version), "1d", probabilities, group["delayed"].to_numpy())
        row = {"version": str(version), "day": when, **_figures(figures)}
        bins = (references.get(str(version)) or {}).get("output_psi")
        if bins:
            edges = np.asarray(bins["edges"], dtype="float64")
            row["output_psi"] = psi_against(edges, np.asarray(bins["fractions"]), probabilities)
        rows.append(row)
    return pd.DataFrame(rows)


def references_of(folder: Path) -> dict[str, dict]:
    """Each version's reference the server wrote beside its log (`serving.prediction_log`):
    its holdout's figures and probability bins."""
    out = {}
    for path in sorted((folder / MODELS).glob("*/*.json")):
        out[path.stem] = json.loads(path.read_text())
    return out


DAILY = ("predictions", "roc_auc", "log_loss", "mean_probability", "delay_rate")


def _figures(realized: Realized) -> dict[str, float]:
    return {
        "predictions": realized.predictions,
        "roc_auc": realized.roc_auc,
        "log_loss": realized.log_loss,
        "mean_probability": realized.mean_probability,
        "delay_rate": realized.delay_rate,
    }


def monitor(settings: Settings, track: bool = True, figure: Path | None = None) -> MonitorReport:
    """The figures from the log under MLOPS_HOME (or MLOPS_PREDICTIONS__FOLDER); with `track`,
    each version's daily series to MLflow; with `figure`, the picture there too."""
    config = predictions_of(settings)
    assert config.folder is not None and config.outcomes is not None
    predictions = read_parquet_folder(config.folder, [*PREDICTED, "delay_probability"])
    outcomes = read_parquet_folder(config.outcomes)
    if predictions.empty:
        raise NoDataError(f"no prediction in the log at {config.folder}")
    report = MonitorReport(predictions=len(predictions), outcomes=len(outcomes))
    names = predictions.drop_duplicates("version")
    report.models = dict(zip(names["version"].astype(str), names["model"].astype(str), strict=True))
    if outcomes.empty:
        return report
    pairs = matured(predictions, outcomes)
    report.matured = len(pairs)
    newest = float(np.nanmax(to_minutes(outcomes["arrived_at"])))
    report.newest = pd.Timestamp(int(newest), unit="m")
    report.windows = realized(pairs, newest, config.quality_windows_h)
    references = references_of(config.folder)
    report.daily = daily(pairs, references)
    if figure is not None and not report.daily.empty:
        from training.plots import draw_realized, save_png

        holdout = {v: r.get("holdout", {}).get("roc_auc") for v, r in references.items()}
        report.figure = save_png(draw_realized(report.daily, holdout), figure)
    if track and not report.daily.empty:
        report.runs = _track(settings, report)
    return report


def _track(settings: Settings, report: MonitorReport) -> dict[str, str]:
    """One run per version, replaced: the daily figures as metrics stepped by day."""
    from mlflow.entities import Metric

    from training.tracking import experiment_id

    tracking = tracking_of(settings)
    client = tracking.client()
    experiment = experiment_id(client, tracking)
    runs = {}
    for version, series in report.daily.groupby("version"):
        model = report.models.get(str(version), "model")
        old = client.search_runs([experiment], filter_string=f"tags.`{MONITOR_TAG}` = '{version}'")
        for run in old:
            client.delete_run(run.info.run_id)
        run = client.create_run(
            experiment,
            run_name=f"monitor {model} v{version}",
            tags={
                MONITOR_TAG: str(version),
                "mlflow.note.content": (
                    f"Realized quality of {model} v{version} as served: its predictions "
                    "(the prediction log) joined with the flights' arrivals, per day of "
                    "arrival; written by `mlops monitor`, replaced at each call."
                ),
            },
        )
        metrics = []
        for row in series.itertuples(index=False):
            stamp = int(pd.Timestamp(row.day).timestamp() * 1000)
            step = int(pd.Timestamp(row.day).toordinal())
            for name in (*DAILY, "output_psi"):
                value = float(getattr(row, name, float("nan")))
                if np.isfinite(value):
                    metrics.append(Metric(f"realized_{name}", value, stamp, step))
        for i in range(0, len(metrics), 1000):  # MLflow's batch limit
            client.log_batch(run.info.run_id, metrics=metrics[i : i + 1000])
        if report.figure is not None:
            client.log_artifact(run.info.run_id, str(report.figure), "monitoring")
        client.set_terminated(run.info.run_id)
        runs[str(version)] = run.info.run_id
    return runs
