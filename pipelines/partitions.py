"""Time partitions of the flights: bounded in rows, so memory is bounded by them, not the data.

Each month is cut into ranges of whole days holding about `target_rows` flights. A partition's
features need the events of flights scheduled up to `LOOKBACK_H` before it and `LOOKAHEAD_H`
after it, which `neighbours` finds however small the partitions are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import pyarrow.parquet as pq

from pipelines.errors import NoDataError
from pipelines.layout import DataLayout
from pipelines.transform import LOOKAHEAD_H, LOOKBACK_H

TARGET_ROWS = 250_000
SAMPLE_BUDGET = 250_000  # rows of the training months kept in all for quantiles


@dataclass(frozen=True)
class Partition:
    name: str  # 2013-01, or 2013-01-d10 for the range starting on the 10th
    month: str
    start: pd.Timestamp
    end: pd.Timestamp
    rows: int  # an estimate from the Parquet footers, for planning only

    @property
    def start_min(self) -> float:
        return float(self.start.value // 60_000_000_000)

    @property
    def end_min(self) -> float:
        return float(self.end.value // 60_000_000_000)


def month_rows(layout: DataLayout, month: str) -> int:
    files = layout.month_partition("flights", month).glob("*.parquet")
    return sum(pq.read_metadata(f).num_rows for f in files)


def plan_partitions(layout: DataLayout, target_rows: int = TARGET_ROWS) -> list[Partition]:
    months = layout.months("flights")
    if not months:
        raise NoDataError(f"no bronze flights under {layout.bronze('flights')}: run ingest first")
    rows = {m: month_rows(layout, m) for m in months}
    per_day = sum(rows.values()) / sum(pd.Period(m, "M").days_in_month for m in months)
    days = max(3, min(31, math.floor(target_rows / max(per_day, 1))))  # >= 3 keeps overlap small
    partitions = []
    for month in months:
        start = pd.Timestamp(f"{month}-01")
        end = start + pd.offsets.MonthBegin(1)
        length = pd.Period(month, "M").days_in_month
        cuts = list(range(0, length, days))
        for i, day in enumerate(cuts):
            lo = start + pd.Timedelta(days=day)
            hi = end if i + 1 == len(cuts) else start + pd.Timedelta(days=cuts[i + 1])
            name = month if len(cuts) == 1 else f"{month}-d{day + 1:02d}"
            share = (hi - lo) / (end - start)
            partitions.append(Partition(name, month, lo, hi, round(rows[month] * share)))
    return partitions


def neighbours(partitions: list[Partition], index: int) -> list[int]:
    """Partitions whose flights' events a partition's features can observe (itself included)."""
    me = partitions[index]
    lo = me.start - pd.Timedelta(hours=LOOKBACK_H)
    hi = me.end + pd.Timedelta(hours=LOOKAHEAD_H)
    return [i for i, p in enumerate(partitions) if p.start < hi and p.end > lo]


def sample_sizes(partitions: list[Partition], train: set[str]) -> dict[str, int]:
    """Rows each training partition contributes to the quantile sample (a fixed total)."""
    total = sum(p.rows for p in partitions if p.name in train) or 1
    return {p.name: math.ceil(SAMPLE_BUDGET * p.rows / total) for p in partitions}


def read_partition(layout: DataLayout, partition: Partition) -> pd.DataFrame:
    """The partition's flights; row-group statistics let Parquet skip the rest of the month."""
    files = sorted(layout.month_partition("flights", partition.month).glob("*.parquet"))
    column = "scheduled_departure"
    filters = [(column, ">=", partition.start), (column, "<", partition.end)]
    frames = [pd.read_parquet(f, filters=filters) for f in files]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
