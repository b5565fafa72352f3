"""Flights-like data at any scale, for benchmarks and scale tests.

Rows are resampled from the real flights (carrier, route, aircraft, schedule clock times and
delays travel together, so their joint distribution is real) and given dates drawn uniformly
over the year; actual clock times are recomputed from the delays so every row stays valid.
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


def synthesize(
    real: pd.DataFrame, rows: int, out: Path, year: int = 2013, seed: int = 0
) -> list[Path]:
    """Write `rows` synthetic flights as Parquet parts under `out`; returns the part paths."""
    columns = SCHEMAS["flights"].columns
    real = real[columns].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    days = pd.date_range(f"{year}-01-01", f"{year}-12-31", freq="D")
    paths = []
    for index, start in enumerate(range(0, rows, CHUNK_ROWS)):
        n = min(CHUNK_ROWS, rows - start)
        chunk = real.iloc[rng.integers(0, len(real), n)].reset_index(drop=True)
        date = days[rng.integers(0, len(days), n)]
        chunk["year"], chunk["month"], chunk["day"] = date.year, date.month, date.day
        chunk["dep_time"] = _clock(chunk["sched_dep_time"], chunk["dep_delay"])
        chunk["arr_time"] = _clock(chunk["sched_arr_time"], chunk["arr_delay"]).where(
            chunk["arr_time"].notna()
        )
        paths.append(write_parquet_atomic(chunk, out / f"part-{index:05d}.parquet"))
    return paths
