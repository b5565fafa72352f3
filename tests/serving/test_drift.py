"""Online drift: PSI over a sliding window of served rows against the training distribution."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.spec import build_spec, psi_bins, summarize
from serving.drift import DriftMonitor

from ..training.conftest import synthetic_table


def _spec():
    table = synthetic_table(20_000, 0)
    return build_spec([summarize(table, "2013-01", "train", 0)], min_category_count=1), table


def _served(table: pd.DataFrame, spec) -> tuple[np.ndarray, np.ndarray]:
    values = table[[f.name for f in spec.numerical]].to_numpy("float32")
    return np.nan_to_num(values), np.isnan(values)


def test_psi_is_near_zero_for_training_like_traffic_and_large_after_a_shift() -> None:
    spec, _ = _spec()
    monitor = DriftMonitor(spec, window_rows=5_000)
    same, missing = _served(synthetic_table(5_000, 7), spec)
    for start in range(0, 5_000, 100):  # batch by batch, as the batcher feeds it
        monitor.update(same[start : start + 100], missing[start : start + 100])
    calm = monitor.report()
    assert monitor.rows == 5_000
    assert max(calm.values()) < 0.05

    shifted = same.copy()
    column = [f.name for f in spec.numerical].index("origin_dep_delay_mean_0_1h")
    shifted[:, column] += 10  # two standard deviations later
    monitor.update(shifted, missing)  # the window now holds only shifted rows
    drifted = monitor.report()
    assert drifted["origin_dep_delay_mean_0_1h"] > 1.0
    assert drifted["month"] < 0.05


def test_the_window_keeps_the_newest_rows_and_ignores_defaults() -> None:
    spec, _ = _spec()
    monitor = DriftMonitor(spec, window_rows=1_000)
    values, missing = _served(synthetic_table(3_000, 3), spec)
    shifted = values + 100
    monitor.update(shifted[:2_500], missing[:2_500])
    monitor.update(values[:1_000], missing[:1_000])  # wraps around: only these remain
    assert monitor.rows == 1_000
    assert max(monitor.report().values()) < 0.1
    all_missing = np.ones_like(missing)
    fresh = DriftMonitor(spec, window_rows=100)
    fresh.update(shifted[:100], all_missing[:100])
    assert fresh.report() == {}  # defaults are not observations


def test_the_output_psi_is_against_the_holdouts_probabilities() -> None:
    spec, _ = _spec()
    rng = np.random.default_rng(0)
    edges, fractions = psi_bins(rng.beta(2, 6, 50_000))
    monitor = DriftMonitor(spec, window_rows=5_000, output={"edges": edges, "fractions": fractions})
    assert monitor.output_psi() is None  # nothing served yet
    for _ in range(0, 5_000, 700):  # batch by batch, wrapping around
        monitor.update_outputs(rng.beta(2, 6, 700).astype("float32"))
    assert monitor.output_psi() < 0.02
    monitor.update_outputs(rng.beta(4, 4, 5_000).astype("float32"))  # more delays predicted
    assert monitor.output_psi() > 0.5
    unrecorded = DriftMonitor(spec)  # a model trained before the holdout's were recorded
    unrecorded.update_outputs(rng.beta(4, 4, 100).astype("float32"))
    assert unrecorded.output_psi() is None
