"""The pictures of a training run, drawn with matplotlib and saved as PNG.

One module for every caller (the training run logs them to MLflow; the notebook and the README
reuse them). Each `draw_*` takes plain arrays and returns the figure; `save_png` writes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

if "inline" not in matplotlib.get_backend():  # a notebook keeps its inline backend
    matplotlib.use("Agg")  # elsewhere no display: files only
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def save_png(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def draw_learning_curves(
    train_loss: Sequence[float], valid_loss: Sequence[float], step: str = "epoch"
) -> Figure:
    """Log loss per epoch (the network) or boosting round (trees)."""
    figure, axes = plt.subplots(figsize=(5, 3.5))
    steps = np.arange(len(train_loss))
    marker = "o" if len(steps) <= 50 else None
    axes.plot(steps, train_loss, marker=marker, label="train")
    axes.plot(steps, valid_loss, marker=marker, label="validation")
    axes.set_xlabel(step)
    axes.set_ylabel("log loss")
    axes.set_title("Learning curves")
    axes.legend()
    return figure


def draw_roc(labels: np.ndarray, scores: np.ndarray, auc: float) -> Figure:
    order = np.argsort(-scores)
    positives = labels[order] == 1
    tpr = np.concatenate([[0], np.cumsum(positives) / max(positives.sum(), 1)])
    fpr = np.concatenate([[0], np.cumsum(~positives) / max((~positives).sum(), 1)])
    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    axes.plot(fpr, tpr, label=f"model (AUC {auc:.3f})")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.set_title("ROC, test months")
    axes.legend(loc="lower right")
    return figure


def draw_calibration(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> Figure:
    """Observed delay rate against predicted probability, in equal-count bins."""
    order = np.argsort(probabilities)
    groups = np.array_split(order, bins)
    predicted = [probabilities[g].mean() for g in groups if len(g)]
    observed = [labels[g].mean() for g in groups if len(g)]
    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    axes.plot(predicted, observed, marker="o", label="model")
    top = max(max(predicted), max(observed))
    axes.plot([0, top], [0, top], linestyle="--", color="grey", label="perfect")
    axes.set_xlabel("predicted delay probability")
    axes.set_ylabel("observed delay rate")
    axes.set_title("Calibration, test months")
    axes.legend()
    return figure


def draw_importance(names: Sequence[str], drops: Sequence[float], top: int = 20) -> Figure:
    order = np.argsort(drops)[::-1][:top][::-1]
    figure, axes = plt.subplots(figsize=(6, 0.28 * len(order) + 1.2))
    axes.barh([names[i] for i in order], [drops[i] for i in order])
    axes.set_xlabel("ROC-AUC drop when shuffled")
    axes.set_ylabel("feature")
    axes.set_title("Permutation importance, validation month")
    return figure


PSI_WARN, PSI_ALERT = 0.1, 0.25  # the usual reading: < 0.1 stable, > 0.25 shifted


def draw_psi(names: Sequence[str], values: Sequence[float], title: str, top: int = 25) -> Figure:
    """PSI per feature, largest first, with the usual warning and alert lines."""
    order = np.argsort(values)[::-1][:top][::-1]
    figure, axes = plt.subplots(figsize=(6, 0.28 * len(order) + 1.2))
    colors = [
        "tab:red" if values[i] > PSI_ALERT else "tab:orange" if values[i] > PSI_WARN else "tab:blue"
        for i in order
    ]
    axes.barh([names[i] for i in order], [values[i] for i in order], color=colors)
    for line in (PSI_WARN, PSI_ALERT):
        axes.axvline(line, linestyle="--", color="grey", linewidth=0.8)
    axes.set_xlabel("population stability index")
    axes.set_ylabel("feature")
    axes.set_title(title)
    return figure


def draw_delay_rate(
    groups: Sequence[object], rates: Sequence[float], flights: Sequence[int], by: str
) -> Figure:
    """The share of flights arriving more than 15 minutes late, per group, with its volume."""
    figure, axes = plt.subplots(figsize=(6, 3.5))
    positions = np.arange(len(groups))
    axes.bar(positions, rates, color="tab:blue")
    axes.set_xticks(positions, [str(g) for g in groups], rotation=90 if len(groups) > 12 else 0)
    axes.set_xlabel(by)
    axes.set_ylabel("delayed share")
    axes.set_title(f"Arrival delay > 15 min by {by}")
    volume = axes.twinx()
    volume.plot(positions, flights, color="tab:orange", marker=".", label="flights")
    volume.set_ylabel("flights")
    volume.legend(loc="upper left")
    return figure


def draw_realized(
    daily: pd.DataFrame, holdout_auc: dict[str, float | None] | None = None
) -> Figure:
    """Realized quality per day of arrival and model version (`mlops monitor`): ROC-AUC (and
    the version's holdout figure, dashed) above, calibration (mean predicted probability
    against the observed delay rate) with the number of matured predictions in the middle,
    and the PSI of the predicted probabilities against the holdout's below."""
    holdout_auc = holdout_auc or {}
    panels = 3 if "output_psi" in daily else 2
    figure, axes = plt.subplots(panels, 1, figsize=(7, 2.4 * panels + 0.6), sharex=True)
    auc, calibration = axes[0], axes[1]
    for version, series in daily.groupby("version"):
        line = auc.plot(series["day"], series["roc_auc"], marker=".", label=f"v{version}")[0]
        if holdout_auc.get(str(version)) is not None:
            auc.axhline(
                holdout_auc[str(version)],
                linestyle="--",
                color=line.get_color(),
                label=f"v{version} holdout",
            )
        for column, style, what in (
            ("mean_probability", {"marker": "."}, "predicted"),
            ("delay_rate", {"linestyle": "--"}, "observed"),
        ):
            calibration.plot(
                series["day"],
                series[column],
                color=line.get_color(),
                label=f"v{version} {what}",
                **style,
            )
        if panels == 3:
            axes[2].plot(series["day"], series["output_psi"], marker=".", color=line.get_color())
    auc.set_ylabel("ROC-AUC")
    auc.set_title("Realized quality of the served model, per day of arrival")
    auc.legend(loc="lower left", fontsize="small")
    calibration.set_ylabel("delayed share")
    calibration.legend(loc="upper left", fontsize="small")
    volume = calibration.twinx()
    totals = daily.groupby("day")["predictions"].sum()
    volume.bar(totals.index, totals.to_numpy(), color="tab:gray", alpha=0.2, width=0.8)
    volume.set_ylabel("matured predictions")
    if panels == 3:
        # a day's PSI, against the whole holdout, swings with the day's weather (a calm day
        # puts most flights in the lowest bins): no alert line here, the alert reads the
        # server's window of 10,000 rows (infra/prometheus/rules/model.yml)
        axes[2].set_ylabel("output PSI of the day")
    figure.autofmt_xdate()
    return figure
