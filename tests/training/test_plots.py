"""Each plot draws on small data, labels its axes and writes a real PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training import plots

rng = np.random.default_rng(0)
LABELS = rng.integers(0, 2, 500)
SCORES = np.clip(LABELS * 0.3 + rng.random(500) * 0.7, 0, 1)

CASES = {
    "learning_curves": (
        lambda: plots.draw_learning_curves([0.6, 0.5, 0.45], [0.62, 0.55, 0.56]),
        "epoch",
        "log loss",
    ),
    "roc": (
        lambda: plots.draw_roc(LABELS, SCORES, 0.8),
        "false positive rate",
        "true positive rate",
    ),
    "calibration": (
        lambda: plots.draw_calibration(LABELS, SCORES),
        "predicted delay probability",
        "observed delay rate",
    ),
    "importance": (
        lambda: plots.draw_importance(["a", "b", "c"], [0.01, 0.05, -0.001]),
        "ROC-AUC drop when shuffled",
        "feature",
    ),
    "delay_rate": (
        lambda: plots.draw_delay_rate([5, 6, 7], [0.1, 0.3, 0.2], [100, 300, 200], "hour"),
        "hour",
        "delayed share",
    ),
    "psi": (
        lambda: plots.draw_psi(["a", "b", "c"], [0.02, 0.4, 0.15], "PSI, 2013-11"),
        "population stability index",
        "feature",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_plot_has_its_axes_labels_and_writes_a_png(name: str, tmp_path: Path) -> None:
    draw, xlabel, ylabel = CASES[name]
    figure = draw()
    axes = figure.axes[0]
    assert (axes.get_xlabel(), axes.get_ylabel()) == (xlabel, ylabel)
    assert axes.has_data()
    path = plots.save_png(figure, tmp_path / f"{name}.png")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5_000
