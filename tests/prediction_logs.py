"""Prediction logs as the server writes them, for the tests of what reads them."""

from __future__ import annotations

import numpy as np

from pipelines.layout import DataLayout
from pipelines.online import Landed
from serving.config import PredictionLogConfig
from serving.prediction_log import PredictionLog

DAY = 24 * 60.0


def table(keys: list[tuple[str, float]], version: str, served: float, p: list[float]) -> dict:
    """A prediction log table for flights `carrier|flight|origin` scheduled at minutes."""
    parts = [key[0].split("|") for key in keys]
    return {
        "carrier": np.array([c for c, _, _ in parts], dtype=object),
        "flight": np.array([int(f) for _, f, _ in parts]),
        "origin": np.array([o for _, _, o in parts], dtype=object),
        "scheduled_departure": np.array(
            [np.datetime64(int(m), "m") for _, m in keys], dtype="datetime64[us]"
        ),
        "model": np.array(["flight-delay"] * len(keys), dtype=object),
        "version": np.array([version] * len(keys), dtype=object),
        "served_at": np.full(len(keys), np.datetime64(int(served * 1e6), "us")),
        "delay_probability": np.array(p, dtype="float64"),
    }


def served_and_landed(home: DataLayout, flights: int = 2000, seed: int = 7) -> PredictionLogConfig:
    """One version's predictions for `flights` flights over a few days, and the arrivals of
    most of them, written by the log's own writer under `home`'s offline store."""
    rng = np.random.default_rng(seed)
    keys = [(f"B6|{n}|JFK", float(DAY * 10 + n * 3)) for n in range(flights)]
    config = PredictionLogConfig(folder=home.predictions, outcomes=home.outcomes)
    log = PredictionLog(config)
    p = rng.random(len(keys)).round(3).tolist()
    log._write_all(config.folder, {"day": table(keys, "1", 100.0, p)}, "")
    late = rng.random(len(keys)) < np.asarray(p)  # delayed about as often as predicted
    landed = [
        Landed(*key, key[1] + 180, 40.0 if is_late else 0.0)
        for key, is_late in zip(keys[: flights * 9 // 10], late, strict=False)
    ]
    log.record_outcomes(landed)
    log.flush()
    return config
