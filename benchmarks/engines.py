"""Benchmark: the feature table in Polars and in DuckDB, against the pandas reference.

Two more implementations of exactly the table `mlops data features` publishes, from the same
bronze Parquet, so the engines can be timed on the same work. Benchmark only: the project never
imports this module, and `pipelines.transform` stays the one transform shared with serving.
Only the spec's constants (windows, columns, holidays, partitions) come from `pipelines`.

Both engines reproduce the reference's definitions, not a plausible variant of them:
- weather is the row of the departure's own hour (an exact join: a missing hour is NaN, not
  the hour before), as `KeyedTimeTable.at` does;
- a window counts events whose observed minute (truncated, like the reference's int64 stamps)
  lies in [t - start, t - end), less the flight's own event: the first event with its
  identity and scheduled time, ordered by its outcomes with missing last;
- the aircraft's previous departure is the last one scheduled strictly before t, ties in
  scheduled time broken the same way (the last of them, missing outcomes last).
Window sums are of integer-valued delays and stay below 2**53, so every summation order gives
the same float64; means are then sum / count, as in the reference.

    python benchmarks/engines.py --home /tmp/enghome --engines polars duckdb

Polars sizes its thread pool from POLARS_MAX_THREADS when imported; DuckDB is given the same.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow.parquet as pq

from pipelines.events import NEW_YORK, flight_events
from pipelines.features import TABLE_COLUMNS, build_features_pandas, feature_table, load_dims
from pipelines.layout import SPLITS, DataLayout
from pipelines.lookups import AIRPORT_NUMERIC, PLANE_TEXT, WEATHER_COLUMNS, Lookups, holiday_days
from pipelines.partitions import plan_partitions
from pipelines.rules import DELAYED_MIN
from pipelines.spec import LABEL
from pipelines.splits import SplitPlan
from pipelines.storage import parquet_files, read_parquet_folder
from pipelines.transform import (
    HOLIDAY_CAP_DAYS,
    HOUR,
    TAIL_LOOKBACK_H,
    WINDOW_GROUPS,
    WindowGroup,
)

DAY = 24 * HOUR
TAIL_LOOKBACK_MIN = TAIL_LOOKBACK_H * HOUR
TEXT = ["carrier", "tailnum", "origin", "dest", *[f"plane_{c}" for c in PLANE_TEXT]]
# The reference table's dtypes as training reads it back (`training.train.load_splits`)
DTYPES = dict.fromkeys(TABLE_COLUMNS, "float64") | dict.fromkeys(TEXT, "str")
DTYPES |= {"flight": "Int64", "scheduled_departure": "datetime64[ns]", LABEL: "int8"}
FLIGHT_COLUMNS = [
    *["carrier", "flight", "tailnum", "origin", "dest", "scheduled_departure", "distance"],
    *["sched_arr_time", "dep_delay", "arr_delay"],
]
Tables = dict[str, pd.DataFrame]
T = TypeVar("T")


def bronze_files(layout: DataLayout, table: str) -> list[str]:
    """The files `storage.read_parquet_folder` reads, in its order (the table's row order)."""
    return [str(p) for p in parquet_files(layout.bronze(table))]


def partition_frame(layout: DataLayout, plan: SplitPlan) -> pd.DataFrame:
    """The reference's time partitions: a table's rows are ordered by partition, then by flight."""
    rows = [
        (i, int(p.start_min), int(p.end_min), plan.split_of(p.month))
        for i, p in enumerate(plan_partitions(layout))
    ]
    return pd.DataFrame(rows, columns=["part", "start_min", "end_min", "split"])


def to_splits(frame: pd.DataFrame) -> Tables:
    """An engine's ordered rows (TABLE_COLUMNS and `split`) -> the reference's frames."""
    split = frame.pop("split").to_numpy()
    frame = frame[TABLE_COLUMNS].astype(DTYPES)
    return {s: frame[split == s].reset_index(drop=True) for s in SPLITS}


# Polars


def _minutes(column: str | pl.Expr) -> pl.Expr:
    stamp = pl.col(column) if isinstance(column, str) else column
    return stamp.dt.epoch("s") // 60


def _over(numerator: pl.Expr, denominator: int) -> pl.Expr:
    """True division by a constant. Polars divides by a scalar as a multiplication by its
    reciprocal, 1 ulp off the reference's `x / 60` for 117 of the 1,440 minutes of a day; an
    elementwise divisor keeps the division correctly rounded."""
    return numerator / (numerator * 0 + denominator)


def _zone() -> pl.Expr:
    """`events.zone_of`: the IANA zone, else a fixed Etc/GMT offset from `tz` (signs flipped)."""
    offset = (-pl.col("tz")).cast(pl.Int64)
    sign = pl.when(offset >= 0).then(pl.lit("+")).otherwise(pl.lit("-"))
    return pl.coalesce(pl.col("tzone"), pl.format("Etc/GMT{}{}", sign, offset.abs()))


def _polars_events(flights: pl.LazyFrame, airports: pl.DataFrame) -> pl.LazyFrame:
    """`events.flight_events`: the arrival's clock time is read on the departure's day in the
    destination's zone (ambiguous or nonexistent: unknown), then moved a day on if earlier."""
    zones = airports.select("faa", zone=_zone())
    hhmm = pl.col("sched_arr_time")
    local = pl.col("scheduled_departure").dt.truncate("1d") + pl.duration(
        minutes=hhmm // 100 * 60 + hhmm % 100
    )
    in_new_york = [
        pl.when(pl.col("zone") == zone).then(
            local.dt.replace_time_zone(zone, ambiguous="null", non_existent="null")
            .dt.convert_time_zone(NEW_YORK)
            .dt.replace_time_zone(None)
        )
        for zone in zones["zone"].drop_nulls().unique().sort()
    ]
    arrival = _minutes(pl.coalesce(*in_new_york, pl.lit(None, pl.Datetime("ns"))))
    arrival = pl.when(arrival < pl.col("t")).then(arrival + DAY).otherwise(arrival)
    return (
        flights.join(zones.lazy(), left_on="dest", right_on="faa", how="left")
        .with_columns(arrived_at=arrival + pl.col("arr_delay"))
        .select(
            "row",
            *["origin", "dest", "carrier", "flight", "tailnum", "t", "dep_delay", "arrived_at"],
            departed_at=pl.col("t") + pl.col("dep_delay"),
            arr_delay=pl.when(pl.col("arrived_at").is_not_null()).then(pl.col("arr_delay")),
        )
    )


def _polars_windows(
    flights: pl.LazyFrame, events: pl.LazyFrame, group: WindowGroup
) -> pl.LazyFrame:
    """Sums and counts over [t - w, t) by rolling over events and flights in one frame sorted
    by time, closed on the left (`rolling` would include the row itself); a window
    [t - start, t - end) is the difference of two of them."""
    at, value = group.own
    observed = events.filter(
        pl.col(group.key).is_not_null() & pl.col(at).is_not_null() & pl.col(value).is_not_null()
    ).select(
        key=group.key,
        at=pl.col(at).cast(pl.Int64),
        v=value,
        n=pl.lit(1.0),
        row=pl.lit(None, pl.get_index_type()),
    )
    queries = flights.select(key=group.key, at="t", v=pl.lit(0.0), n=pl.lit(0.0), row="row")
    widths = sorted({int(w) for w in (*group.starts, *group.ends)} - {0})
    sums = [
        pl.col(c).rolling_sum_by("at", f"{w}i", closed="left").over("key").alias(f"{c}{w}")
        for c in ("v", "n")
        for w in widths
    ]
    rolled = (
        pl.concat([observed, queries])
        .sort("key", "at")
        .select("row", *sums)
        .filter(pl.col("row").is_not_null())
    )

    def rolling(c: str, width: int) -> pl.Expr:
        return pl.col(f"{c}{width}") if width else pl.lit(0.0)

    out = []
    for start, end, (mean_name, count_name) in zip(
        group.starts, group.ends, group.names, strict=True
    ):
        total = rolling("v", start) - rolling("v", end)
        count = rolling("n", start) - rolling("n", end)
        own_at, own_value = pl.col(f"own_{at}"), pl.col(f"own_{value}")
        mine = (
            (own_at >= pl.col("t") - start)
            & (own_at < pl.col("t") - end)
            & own_value.is_not_null()
            & (count > 0)
        ).fill_null(False)
        total = total - pl.when(mine).then(own_value).otherwise(0.0)
        count = count - mine.cast(pl.Float64)
        out += [pl.when(count > 0).then(total / count).alias(mean_name), count.alias(count_name)]
    return flights.join(rolled, on="row").select("row", *out)


def _polars_features(layout: DataLayout, partitions: pd.DataFrame) -> pl.LazyFrame:
    read = {t: bronze_files(layout, t) for t in ("flights", "weather", "planes", "airports")}
    airports = pl.read_parquet(read["airports"], hive_partitioning=False)
    flights = (
        pl.scan_parquet(read["flights"], hive_partitioning=False)
        .select(FLIGHT_COLUMNS)
        .with_row_index("row")
        .with_columns(t=_minutes("scheduled_departure"))
        .with_columns(hour_start=pl.col("t") - pl.col("t") % HOUR, day=pl.col("t") // DAY)
    )
    # Six parts of the plan read the events: computed once (the plan would recompute them)
    events = _polars_events(flights, airports).collect(engine="streaming").lazy()
    own_columns = ["departed_at", "dep_delay", "arrived_at", "arr_delay"]
    own = (
        events.sort(own_columns, nulls_last=True, maintain_order=True)
        .unique(["carrier", "flight", "origin", "t"], keep="first")
        .select(
            "carrier",
            "flight",
            "origin",
            "t",
            *[pl.col(c).name.prefix("own_") for c in own_columns],
        )
    )
    queries = flights.filter(pl.col("arr_delay").is_not_null()).join(
        own, on=["carrier", "flight", "origin", "t"], how="left"
    )
    previous = (
        events.filter(pl.col("tailnum").is_not_null())
        .select("tailnum", prev_sched="t", prev_departed_at="departed_at", prev_delay="dep_delay")
        .sort("tailnum", "prev_sched", "prev_departed_at", "prev_delay", nulls_last=True)
        .unique(["tailnum", "prev_sched"], keep="last")
        .sort("prev_sched")
    )
    since = pl.col("t") - pl.col("prev_sched")
    recent = (since <= TAIL_LOOKBACK_MIN).fill_null(False)
    departed = recent & (pl.col("prev_departed_at") < pl.col("t")).fill_null(False)
    tail = (
        queries.select("row", "t", "tailnum")
        .sort("t")
        .join_asof(
            previous,
            left_on="t",
            right_on="prev_sched",
            by="tailnum",
            allow_exact_matches=False,
            check_sortedness=False,  # both sides are sorted by time above
        )
        .select(
            "row",
            tail_prev_hours_since=pl.when(recent).then(_over(since, HOUR)),
            tail_prev_departed=pl.when(recent).then(departed.cast(pl.Float64)),
            tail_prev_dep_delay=pl.when(departed).then(pl.col("prev_delay")),
            tail_prev_overdue_min=pl.when(recent).then(
                pl.when(departed).then(0.0).otherwise(since.cast(pl.Float64))
            ),
        )
    )
    scheduled = events.group_by("origin", hour_start=pl.col("t") - pl.col("t") % HOUR).agg(
        origin_scheduled_count_hour=pl.len().cast(pl.Float64)
    )
    weather = pl.scan_parquet(read["weather"], hive_partitioning=False).select(
        "origin", *WEATHER_COLUMNS, hour_start=_minutes("time_hour")
    )
    planes = pl.scan_parquet(read["planes"], hive_partitioning=False).select(
        "tailnum",
        *[pl.col(c).alias(f"plane_{c}") for c in PLANE_TEXT],
        plane_year=pl.col("year").cast(pl.Float64),
        plane_seats=pl.col("seats").cast(pl.Float64),
        plane_engines=pl.col("engines").cast(pl.Float64),
    )
    dests = airports.lazy().select(
        pl.col("faa").alias("dest"), *[pl.col(c).alias(f"dest_{c}") for c in AIRPORT_NUMERIC]
    )
    holidays = pl.LazyFrame({"holiday": holiday_days()})
    near = (
        flights.select("day")
        .unique()
        .sort("day")
        .join_asof(holidays, left_on="day", right_on="holiday", strategy="nearest")
        .select(
            "day",
            days_to_holiday=pl.min_horizontal(
                (pl.col("holiday") - pl.col("day")).abs(), HOLIDAY_CAP_DAYS
            ).cast(pl.Float64),
        )
    )
    # Partitions are whole days: each day's partition, found once per day
    days = (
        near.select("day")
        .join_asof(
            pl.from_pandas(partitions)
            .lazy()
            .with_columns(pl.col("start_min") // DAY)
            .sort("start_min"),
            left_on="day",
            right_on="start_min",
        )
        .filter(pl.col("day") < pl.col("end_min") // DAY)
        .select("day", "part", "split")
    )
    stamp = pl.col("scheduled_departure")
    windows = [_polars_windows(queries, events, group) for group in WINDOW_GROUPS]
    table = (
        queries.join(days, on="day", how="inner")
        .join(weather, on=["origin", "hour_start"], how="left")
        .join(planes, on="tailnum", how="left")
        .join(dests, on="dest", how="left")
        .join(near, on="day", how="left")
        .join(scheduled, on=["origin", "hour_start"], how="left")
        .with_columns(
            month=stamp.dt.month().cast(pl.Float64),
            day_of_week=(stamp.dt.weekday() - 1).cast(pl.Float64),
            day_of_year=stamp.dt.ordinal_day().cast(pl.Float64),
            dep_hour=_over(pl.col("t") % DAY, HOUR),
            plane_age=stamp.dt.year().cast(pl.Float64) - pl.col("plane_year"),
            **{LABEL: (pl.col("arr_delay") > DELAYED_MIN).cast(pl.Int8)},
        )
    )
    for frame in [*windows, tail]:
        table = table.join(frame, on="row", how="left")
    return table.sort("part", "row").select(*TABLE_COLUMNS, "split")


def build_polars(home: Path, plan: SplitPlan | None = None) -> Tables:
    """The feature table per split, by Polars' lazy engine (streaming where it can)."""
    layout = DataLayout(home)
    query = _polars_features(layout, partition_frame(layout, plan or SplitPlan()))
    return to_splits(query.collect(engine="streaming").to_pandas())


# DuckDB

EPOCH = "TIMESTAMP '1970-01-01'"


def _sql_list(values: list[str]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def _sql_scan(files: list[str]) -> str:
    return f"read_parquet({_sql_list(files)}, hive_partitioning = false)"


def _sql_minutes(stamp: str) -> str:
    """Minutes since the epoch, floored (`date_diff` counts the minute boundaries crossed)."""
    return f"date_diff('minute', {EPOCH}, CAST({stamp} AS TIMESTAMP))"


# `events.zone_of`, and the arrival's clock time on the departure's day as a local timestamp
SQL_LOCAL_ARRIVAL = """
SELECT f.*, coalesce(a.tzone, 'Etc/GMT' || CASE WHEN -trunc(a.tz) >= 0 THEN '+' ELSE '-' END
           || CAST(abs(trunc(a.tz)) AS BIGINT)) AS zone,
       date_trunc('day', CAST(f.scheduled_departure AS TIMESTAMP))
           + to_minutes(CAST(f.sched_arr_time // 100 * 60 + f.sched_arr_time % 100 AS BIGINT))
           AS local
FROM flights f LEFT JOIN airports a ON f.dest = a.faa
"""
# pandas' tz_localize(ambiguous="NaT", nonexistent="NaT"): ICU resolves both silently, so try
# the zone's offsets a day either side of the local time and keep the instant only if exactly
# one of them reads back as that local time (none: nonexistent; two: ambiguous).
SQL_EVENTS = f"""
WITH local AS ({SQL_LOCAL_ARRIVAL}),
offsets AS (
    SELECT *, timezone(zone, CAST(local - INTERVAL 1 DAY AS TIMESTAMPTZ))
                  - (local - INTERVAL 1 DAY) AS before,
              timezone(zone, CAST(local + INTERVAL 1 DAY AS TIMESTAMPTZ))
                  - (local + INTERVAL 1 DAY) AS after
    FROM local
),
candidates AS (
    SELECT *, timezone(zone, CAST(local - before AS TIMESTAMPTZ)) = local AS fits_before,
              timezone(zone, CAST(local - after AS TIMESTAMPTZ)) = local AS fits_after
    FROM offsets
),
instants AS (
    SELECT *, CAST(CASE
                  WHEN fits_before AND fits_after AND before <> after THEN NULL
                  WHEN fits_before THEN local - before
                  WHEN fits_after THEN local - after END AS TIMESTAMPTZ) AS instant
    FROM candidates
),
arrivals AS (
    SELECT *, {_sql_minutes("timezone('America/New_York', instant)")} AS arrival
    FROM instants
),
events AS (
    SELECT *, CASE WHEN arrival < t THEN arrival + {DAY} ELSE arrival END + arr_delay
              AS arrived_at
    FROM arrivals
)
SELECT origin, dest, carrier, flight, tailnum, t, dep_delay, arrived_at,
       t + dep_delay AS departed_at,
       CASE WHEN arrived_at IS NOT NULL THEN arr_delay END AS arr_delay
FROM events
"""


def _sql_windows(group: WindowGroup) -> str:
    """Counts and sums of the events observed before each window edge, by an as-of join of
    every flight to the running totals of its key: [t - start, t - end) is the difference of
    two. (RANGE frames ending `end + 1` PRECEDING give the same numbers, but DuckDB 2.0
    searches such a frame's end per row: ~2.4 s per aggregate at 1x instead of ~0.1 s.)"""
    at, value = group.own
    edges = sorted({int(w) for w in (*group.starts, *group.ends)})
    joins = "\n".join(
        f"ASOF LEFT JOIN running e{w} ON e{w}.key = q.{group.key} AND e{w}.minute < q.t - {w}"
        for w in edges
    )
    columns = []
    for start, end, (mean, count) in zip(group.starts, group.ends, group.names, strict=True):
        total = f"coalesce(e{end}.total, 0) - coalesce(e{start}.total, 0)"
        seen = f"coalesce(e{end}.seen, 0) - coalesce(e{start}.seen, 0)"
        mine = (
            f"coalesce(own_{at} >= q.t - {start} AND own_{at} < q.t - {end} "
            f"AND own_{value} IS NOT NULL AND {seen} > 0, false)"
        )
        kept = f"CAST({seen} - CAST({mine} AS INTEGER) AS DOUBLE)"
        total = f"({total} - CASE WHEN {mine} THEN own_{value} ELSE 0 END)"
        columns.append(f"CASE WHEN {kept} > 0 THEN {total} / {kept} END AS {mean}")
        columns.append(f"{kept} AS {count}")
    return f"""
WITH running AS (
    SELECT key, minute, sum(seen) OVER w AS seen, sum(total) OVER w AS total
    FROM (
        SELECT {group.key} AS key, CAST(trunc({at}) AS BIGINT) AS minute,
               count(*) AS seen, sum({value}) AS total
        FROM events WHERE {group.key} IS NOT NULL AND {at} IS NOT NULL AND {value} IS NOT NULL
        GROUP BY ALL
    )
    WINDOW w AS (PARTITION BY key ORDER BY minute ROWS UNBOUNDED PRECEDING)
)
SELECT q.row, {", ".join(columns)}
FROM queries q
{joins}
"""


def _sql_features(layout: DataLayout) -> str:
    read = {t: bronze_files(layout, t) for t in ("flights", "weather", "planes", "airports")}
    own = ["departed_at", "dep_delay", "arrived_at", "arr_delay"]
    window_columns = ", ".join(f"g{i}.* EXCLUDE (row)" for i in range(len(WINDOW_GROUPS)))
    windows = "\n".join(
        f"LEFT JOIN ({_sql_windows(group)}) g{i} ON g{i}.row = f.row"
        for i, group in enumerate(WINDOW_GROUPS)
    )
    return f"""
CREATE TEMP TABLE airports AS SELECT * FROM {_sql_scan(read["airports"])};
CREATE TEMP TABLE flights AS
SELECT {", ".join(FLIGHT_COLUMNS)}, t, t - t % {HOUR} AS hour_start, t // {DAY} AS day,
       (CAST(list_position({_sql_list(read["flights"])}, filename) AS BIGINT) << 32)
           + file_row_number AS row
FROM (
    SELECT *, {_sql_minutes("scheduled_departure")} AS t
    FROM read_parquet({_sql_list(read["flights"])}, hive_partitioning = false,
                      filename = true, file_row_number = true)
);
CREATE TEMP TABLE events AS {SQL_EVENTS};
CREATE TEMP TABLE queries AS
SELECT f.row, f.t, f.origin, f.carrier, f.dest, f.tailnum,
       {", ".join(f"o.{c} AS own_{c}" for c in own)}
FROM flights f LEFT JOIN (
    SELECT * FROM events
    QUALIFY row_number() OVER (
        PARTITION BY carrier, flight, origin, t ORDER BY {", ".join(f"{c} NULLS LAST" for c in own)}
    ) = 1
) o USING (carrier, flight, origin, t)
WHERE f.arr_delay IS NOT NULL;
CREATE TEMP TABLE previous AS
SELECT tailnum, t AS prev_sched, departed_at AS prev_departed_at, dep_delay AS prev_delay
FROM events WHERE tailnum IS NOT NULL
QUALIFY row_number() OVER (
    PARTITION BY tailnum, t ORDER BY departed_at DESC NULLS FIRST, dep_delay DESC NULLS FIRST
) = 1;
CREATE TEMP TABLE days AS
SELECT d.day, r.part, r.split,
       least(h.holiday - d.day, d.day - p.holiday, {HOLIDAY_CAP_DAYS}) AS days_to_holiday
FROM (SELECT DISTINCT day FROM flights) d
JOIN partitions r ON d.day * {DAY} >= r.start_min AND d.day * {DAY} < r.end_min
ASOF LEFT JOIN holidays h ON d.day <= h.holiday
ASOF LEFT JOIN holidays p ON d.day > p.holiday;
CREATE TEMP TABLE tail AS
SELECT row,
       since / {HOUR} AS tail_prev_hours_since,
       CAST(CASE WHEN since IS NOT NULL THEN departed END AS DOUBLE) AS tail_prev_departed,
       CASE WHEN departed THEN prev_delay END AS tail_prev_dep_delay,
       CAST(CASE WHEN departed THEN 0 ELSE since END AS DOUBLE) AS tail_prev_overdue_min
FROM (
    SELECT q.row, p.prev_delay,
           CASE WHEN q.t - p.prev_sched <= {TAIL_LOOKBACK_MIN} THEN q.t - p.prev_sched END
               AS since,
           since IS NOT NULL AND coalesce(p.prev_departed_at < q.t, false) AS departed
    FROM queries q ASOF LEFT JOIN previous p ON p.tailnum = q.tailnum AND q.t > p.prev_sched
);
SELECT {", ".join(f'"{c}"' for c in TABLE_COLUMNS)}, split
FROM (
    SELECT f.*, n.part, n.split, {", ".join(f"w.{c}" for c in WEATHER_COLUMNS)},
           {", ".join(f"pl.{c} AS plane_{c}" for c in PLANE_TEXT)},
           year(f.scheduled_departure) - pl.year AS plane_age,
           CAST(pl.seats AS DOUBLE) AS plane_seats, CAST(pl.engines AS DOUBLE) AS plane_engines,
           {", ".join(f"a.{c} AS dest_{c}" for c in AIRPORT_NUMERIC)},
           month(f.scheduled_departure) AS month,
           isodow(f.scheduled_departure) - 1 AS day_of_week,
           dayofyear(f.scheduled_departure) AS day_of_year,
           f.t % {DAY} / {HOUR} AS dep_hour,
           n.days_to_holiday,
           s.origin_scheduled_count_hour,
           tl.* EXCLUDE (row),
           CAST(f.arr_delay > {DELAYED_MIN} AS TINYINT) AS "{LABEL}",
           {window_columns}
    FROM flights f
    JOIN days n ON n.day = f.day
    LEFT JOIN {_sql_scan(read["weather"])} w
        ON w.origin = f.origin AND {_sql_minutes("w.time_hour")} = f.hour_start
    LEFT JOIN {_sql_scan(read["planes"])} pl ON pl.tailnum = f.tailnum
    LEFT JOIN airports a ON a.faa = f.dest
    LEFT JOIN (
        SELECT origin, t - t % {HOUR} AS hour_start,
               CAST(count(*) AS DOUBLE) AS origin_scheduled_count_hour
        FROM events GROUP BY ALL
    ) s ON s.origin = f.origin AND s.hour_start = f.hour_start
    LEFT JOIN tail tl ON tl.row = f.row
    {windows}
    WHERE f.arr_delay IS NOT NULL
)
ORDER BY part, row
"""


def build_duckdb(
    home: Path,
    plan: SplitPlan | None = None,
    threads: int | None = None,
    memory_limit: str | None = None,
    spill_to: Path | None = None,
) -> Tables:
    """The feature table per split, by DuckDB (`threads`, `memory_limit`: DuckDB's defaults
    unless given; past its memory limit it spills to `spill_to`, else to its default)."""
    layout = DataLayout(home)
    config: dict[str, object] = {"threads": threads} if threads else {}
    if memory_limit:
        config["memory_limit"] = memory_limit
    if spill_to:
        config["temp_directory"] = str(spill_to)
    with duckdb.connect(config=config) as con:
        con.execute("SET TimeZone = 'UTC'")  # TIMESTAMP <-> TIMESTAMPTZ casts read as UTC
        con.register("partitions", partition_frame(layout, plan or SplitPlan()))
        con.register("holidays", pd.DataFrame({"holiday": holiday_days()}))
        *setup, query = _sql_features(layout).strip().rstrip(";").split(";\n")
        for statement in setup:
            con.execute(statement)
        return to_splits(con.sql(query).to_arrow_table().to_pandas())


# The comparison and the timings


def build_pandas(home: Path, plan: SplitPlan | None = None) -> Tables:
    """The project's own transform on the whole data in memory: `build_features_pandas` less
    what only it does (writing the tables, lookups and spec, the summaries), so that its
    time compares with the other engines' like for like."""
    layout = DataLayout(home)
    partitions = partition_frame(layout, plan or SplitPlan())
    dims = load_dims(layout)
    flights = read_parquet_folder(layout.bronze("flights"))
    lookups = Lookups.build(
        dims.weather, dims.planes, dims.airports, flight_events(flights, dims.airports)
    )
    table, _ = feature_table(flights, lookups)
    labelled = flights.loc[flights["arr_delay"].notna(), "scheduled_departure"]
    minute = labelled.to_numpy("datetime64[m]").astype("int64")
    parts = [
        table[(minute >= p.start_min) & (minute < p.end_min)].assign(split=p.split)
        for p in partitions.itertuples()
    ]
    return to_splits(pd.concat(parts))


def compare(table: pd.DataFrame, reference: pd.DataFrame) -> str:
    """Whether `table` is the reference exactly: `assert_frame_equal(check_exact=True)` and
    equal row hashes; else what differs, per column: rows, and the largest |difference|."""
    try:
        pd.testing.assert_frame_equal(table, reference, check_exact=True)
    except AssertionError as error:
        if table.shape != reference.shape or list(table.columns) != list(reference.columns):
            return f"different shape or columns: {table.shape} vs {reference.shape}"
        found = []
        for name in reference:
            a, b = table[name], reference[name]
            same = (a == b).fillna(False).to_numpy(bool) | (a.isna() & b.isna()).to_numpy()
            if a.dtype != b.dtype:
                found.append(f"{name}: dtype {a.dtype} vs {b.dtype}")
            elif not same.all():
                numeric = a.dtype.kind in "fi"
                gap = f", max |diff| {np.nanmax(np.abs(a - b)):.3g}" if numeric else ""
                found.append(f"{name}: {(~same).sum()} rows{gap}")
        return "different: " + ("; ".join(found) or str(error).splitlines()[0])
    hashes = pd.util.hash_pandas_object(table).to_numpy()
    if not np.array_equal(hashes, pd.util.hash_pandas_object(reference).to_numpy()):
        return "different row hashes (assert_frame_equal passes)"
    return "equal"


def timed(build: Callable[[], T], seconds: list[float]) -> T:
    """`build()`, its wall time appended to `seconds`."""
    start = time.perf_counter()
    result = build()
    seconds.append(time.perf_counter() - start)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="an ingested MLOPS_HOME")
    parser.add_argument(
        "--engines",
        nargs="+",
        choices=["polars", "duckdb", "pandas-memory"],
        default=["polars", "duckdb"],
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    layout, plan = DataLayout(args.home), SplitPlan()
    reference = {split: read_parquet_folder(layout.split(split)) for split in SPLITS}
    rows = sum(pq.read_metadata(f).num_rows for f in bronze_files(layout, "flights"))
    # DuckDB gets as many threads as Polars' pool (POLARS_MAX_THREADS), like for like
    threads = pl.thread_pool_size()
    builders: dict[str, Callable[[], Tables]] = {
        "polars": lambda: build_polars(args.home, plan),
        "duckdb": lambda: build_duckdb(args.home, plan, threads),
        "pandas-memory": lambda: build_pandas(args.home, plan),
    }
    print(
        f"polars {pl.__version__} ({threads} threads), duckdb {duckdb.__version__}, "
        f"pandas {pd.__version__}; {rows:,} flights; reference: {layout.features.resolve()}"
    )
    seconds: dict[str, list[float]] = {name: [] for name in ["pandas", *args.engines]}
    tables: dict[str, Tables] = {}
    with tempfile.TemporaryDirectory(prefix="engines-") as scratch:
        # build_features_pandas publishes a build: into a copy of the bronze, not the home
        scratch_layout = DataLayout(Path(scratch))
        shutil.copytree(layout.root / "bronze", scratch_layout.root / "bronze")
        for _ in range(args.repeats):  # interleaved, so drifting load hits all alike
            timed(lambda: build_features_pandas(scratch_layout, plan), seconds["pandas"])
            for name in args.engines:
                tables[name] = timed(builders[name], seconds[name])
        tables["pandas"] = {s: read_parquet_folder(scratch_layout.split(s)) for s in SPLITS}
    for name, times in seconds.items():
        median = statistics.median(times)
        verdicts = ", ".join(f"{s} {compare(tables[name][s], reference[s])}" for s in SPLITS)
        runs = " ".join(f"{t:.2f}" for t in times)
        print(f"{name:14} {median:6.2f} s  {rows / median:9,.0f} rows/s  (runs {runs})  {verdicts}")


if __name__ == "__main__":
    main()
