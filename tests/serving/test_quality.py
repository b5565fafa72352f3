"""Realized quality: which prediction matures (the last each version served for a flight,
before or after its arrival), the windows of event time, the bounds; and the server's online
figures equal to `mlops monitor`'s from the files it wrote."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlops.flows.monitor import matured, realized
from pipelines.layout import DataLayout
from pipelines.online import Landed
from pipelines.storage import read_parquet_folder
from serving.config import PredictionLogConfig
from serving.prediction_log import PredictionLog
from serving.quality import RealizedQuality
from tests.prediction_logs import table
from tests.processes import clean_env

DAY = 24 * 60.0


def pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """The definition: the share of (delayed, on time) pairs ranked right, ties counting half."""
    positive, negative = scores[labels], scores[~labels]
    above = (positive[:, None] > negative[None, :]).sum()
    ties = (positive[:, None] == negative[None, :]).sum()
    return float((above + 0.5 * ties) / (len(positive) * len(negative)))


def test_the_last_prediction_of_each_version_matures_before_or_after_the_arrival() -> None:
    quality = RealizedQuality(windows_h=(24,))
    a, b = ("UA|1|EWR", 1000.0), ("AA|2|JFK", 1000.0)
    quality.predictions(table([a, b], "1", served=1.0, p=[0.9, 0.1]))
    quality.predictions(table([a], "1", served=2.0, p=[0.8]))  # the newer one counts
    quality.predictions(table([a], "2", served=2.0, p=[0.3]))  # its own version
    quality.landed([Landed(*a, 1200.0, 40.0), Landed(*b, 1210.0, -3.0)])
    quality.predictions(table([b], "1", served=3.0, p=[0.2]))  # after b landed: replaces 0.1
    quality.predictions(table([b], "1", served=0.5, p=[0.7]))  # older than what is held
    (one,), (two,) = [[r for r in quality.report() if r.version == v] for v in ("1", "2")]
    assert (one.predictions, one.roc_auc, one.delay_rate) == (2, 1.0, 0.5)
    assert one.mean_probability == pytest.approx(0.5)
    assert one.log_loss == pytest.approx(-(math.log(0.8) + math.log(0.8)) / 2)
    assert (two.predictions, two.delay_rate, math.isnan(two.roc_auc)) == (1, 1.0, True)
    assert quality.matured_total == {"1": 2, "2": 1} and quality.waiting == 0


def test_windows_end_at_the_newest_arrival_and_old_flights_are_let_go() -> None:
    quality = RealizedQuality(windows_h=(24, 48), max_flights=3)
    old, recent, late = ("UA|1|EWR", 0.0), ("UA|2|EWR", DAY), ("UA|3|EWR", 2 * DAY)
    quality.predictions(table([old, recent, late], "1", served=1.0, p=[0.2, 0.6, 0.4]))
    quality.landed([Landed(*old, 60.0, 30.0), Landed(*recent, DAY + 60, 0.0)])
    by_window = {r.window: r.predictions for r in quality.report()}
    assert by_window == {"24h": 1, "48h": 2}  # old landed 24 h before recent: out of 24h
    quality.landed([Landed(*late, 2 * DAY + 61, 0.0)])  # 2 days on: old is out of both
    assert {r.window: r.predictions for r in quality.report()} == {"24h": 1, "48h": 2}
    assert (old[0], old[1]) not in quality._labels  # pruned past the longest window
    # a client asking for flights that never land: the oldest asked are dropped, counted
    quality.predictions(table([(f"ZZ|{n}|EWR", 5 * DAY) for n in range(5)], "1", 9.0, [0.5] * 5))
    assert (quality.waiting, quality.evicted) == (3, 2)


def test_the_server_figures_equal_the_monitor_from_the_files_the_log_wrote(
    tmp_path: Path,
) -> None:
    """The same tables to the online join and, through the log's writer, to disk: the online
    report, `mlops monitor`'s computation from the files, and the definition agree."""
    rng = np.random.default_rng(7)
    flights = [(f"B6|{n}|JFK", float(DAY * 10 + n * 7)) for n in range(3000)]
    quality = RealizedQuality(windows_h=(24, 168))
    layout = DataLayout(tmp_path / "home")
    config = PredictionLogConfig(folder=layout.predictions, outcomes=layout.outcomes)
    log = PredictionLog(config)
    for served in range(6):  # each flight asked up to six times, by two versions
        asked = rng.random(len(flights)) < 0.5
        chosen = [f for f, a in zip(flights, asked, strict=True) if a]
        for version in ("3", "4"):
            p = rng.random(len(chosen)).round(2).tolist()  # ties across flights
            quality.predictions(table(chosen, version, 100.0 + served, p))
            log._write_all(config.folder, {"day": table(chosen, version, 100.0 + served, p)}, "")
    landed = [
        Landed(*f, f[1] + 180 + float(rng.integers(0, 600)), float(rng.normal(10, 30)))
        for f in flights[:2500]
    ]
    for start in range(0, len(landed), 97):
        batch = landed[start : start + 97]
        quality.landed(batch)
        log.record_outcomes(batch)
    log.flush()
    online = {(r.version, r.window): r for r in quality.report()}

    predictions = read_parquet_folder(config.folder)
    outcomes = read_parquet_folder(config.outcomes)
    pairs = matured(predictions, outcomes)
    newest = max(f.arrived_at for f in landed)
    offline = {(r.version, r.window): r for r in realized(pairs, newest, (24, 168))}
    assert set(online) == set(offline) == {(v, w) for v in "34" for w in ("24h", "168h")}
    for key, figures in online.items():
        other = offline[key]
        assert figures.predictions == other.predictions > 100
        for name in ("roc_auc", "log_loss", "mean_probability", "delay_rate"):
            assert abs(getattr(figures, name) - getattr(other, name)) < 1e-9, (key, name)
        version, window = key
        hours = int(window[:-1])
        inside = pairs[(pairs["version"] == version) & (pairs["arrived_at"] > newest - hours * 60)]
        expected = pairwise_auc(inside["delayed"].to_numpy(), inside["probability"].to_numpy())
        assert abs(figures.roc_auc - expected) < 1e-9

    # and `mlops monitor` as a user runs it, on that home
    done = subprocess.run(
        [sys.executable, "-m", "mlops", "monitor", "--json", "--no-track"],
        env=clean_env(MLOPS_HOME=str(tmp_path / "home")),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(done.stdout)
    assert report["matured"] == len(pairs)
    for row in report["windows"]:
        figures = online[(row["version"], row["window"])]
        assert row["predictions"] == figures.predictions
        assert abs(row["roc_auc"] - figures.roc_auc) < 1e-9
        assert abs(row["log_loss"] - figures.log_loss) < 1e-9
