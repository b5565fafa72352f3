"""Flights-like data at any scale, for benchmarks and scale tests.

Rows are resampled from the real flights (carrier, route, aircraft, schedule clock times and
delays travel together, so their joint distribution is real) and given dates drawn uniformly
over the year; actual clock times are recomputed from the delays so every row stays valid.

A flight is itself by (carrier, number, origin, scheduled departure), as in the real data:
the transform finds a flight's own event by it, and two flights sharing it would each see the
other's departure as their own and keep their own in their windows (a leak). Resampling a
daily flight puts several copies on one day, so the k-th copy (k >= 1) of an identity on a
day gets number + 10,000 * (k mod 10) and is scheduled k // 10 minutes later.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.schemas import SCHEMAS
from pipelines.storage import write_parquet_atomic

CHUNK_ROWS = 1_000_000


def _clock(hhmm: pd.Series, delay: pd.Series) -> pd.Series:
    minutes = (hhmm // 100) * 60 + hhmm % 100 + delay
    minutes = minutes % (24 * 60)
    return ((minutes // 60) * 100 + minutes % 60).where(delay.notna())


def _copy_rank(real: pd.DataFrame, picks: np.ndarray, day_of: np.ndarray) -> np.ndarray:
    """For each synthetic row, how many rows before it share its identity and day (0, 1, ...)."""
    keys = ["carrier", "flight", "origin", "sched_dep_time"]
    identity = real.groupby(keys, sort=False, dropna=False).ngroup().to_numpy("int64")
    group = identity[picks] * 366 + day_of
    return pd.Series(group).groupby(group, sort=False).cumcount().to_numpy("int64")


def synthesize(
    real: pd.DataFrame, rows: int, out: Path, year: int = 2013, seed: int = 0
) -> list[Path]:
    """Write `rows` synthetic flights as Parquet parts under `out`; returns the part paths."""
    columns = SCHEMAS["flights"].columns
    real = real[columns].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    days = pd.date_range(f"{year}-01-01", f"{year}-12-31", freq="D")
    picks = rng.integers(0, len(real), rows)
    day_of = rng.integers(0, len(days), rows)
    copy = _copy_rank(real, picks, day_of)
    paths = []
    for index, start in enumerate(range(0, rows, CHUNK_ROWS)):
        part = slice(start, min(start + CHUNK_ROWS, rows))
        chunk = real.iloc[picks[part]].reset_index(drop=True)
        date = days[day_of[part]]
        chunk["year"], chunk["month"], chunk["day"] = date.year, date.month, date.day
        k = copy[part]
        chunk["flight"] = chunk["flight"] + 10_000 * (k % 10)
        later = pd.Series(k // 10)
        for column in ("sched_dep_time", "sched_arr_time"):
            chunk[column] = _clock(chunk[column], later).astype(chunk[column].dtype)
        chunk["dep_time"] = _clock(chunk["sched_dep_time"], chunk["dep_delay"])
        chunk["arr_time"] = _clock(chunk["sched_arr_time"], chunk["arr_delay"]).where(
            chunk["arr_time"].notna()
        )
        paths.append(write_parquet_atomic(chunk, out / f"part-{index:05d}.parquet"))
    return paths
