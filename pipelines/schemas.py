"""Schemas of the raw tables and the validation that splits rows into kept and quarantined.

Parsing is done here, column by column, so that one bad value costs one row and not the file;
pandera then checks ranges, known codes and times that exist. Every rejected row carries the
reason for each rule it broke. The rules themselves are `pipelines.rules`, which the online
events are checked against too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pandera.pandas as pa

from pipelines.rules import (
    AIR_TIME_MIN,
    CODE,
    DELAY,
    DISTANCE_MILES,
    FLIGHT_NUMBER,
    TAILNUM,
    WEATHER,
    YEAR,
)

Kind = str  # "int" | "float" | "str"


@dataclass(frozen=True)
class TableSchema:
    """A raw table: its columns and their kinds, and the pandera rules its rows must pass."""

    name: str
    kinds: dict[str, Kind]
    build: Callable[[frozenset[str], frozenset[str]], pa.DataFrameSchema]
    time_partitioned: bool = False
    code_column: str | None = None  # its kept values are the known codes later tables check

    @property
    def columns(self) -> list[str]:
        return list(self.kinds)


def _hhmm(allow_2400: bool) -> pa.Check:
    top = 2400 if allow_2400 else 2359

    def valid(s: pd.Series) -> pd.Series:
        return (s >= 0) & (s <= top) & (s % 100 < 60)

    return pa.Check(valid, name="valid_hhmm", error="not a clock time HHMM")


def _date_exists(frame: pd.DataFrame) -> pd.Series:
    parts = frame[["year", "month", "day"]].astype("float64")
    return pd.to_datetime(parts, errors="coerce").notna()


def _known(codes: frozenset[str]) -> list[pa.Check]:
    return [pa.Check.isin(sorted(codes), error="not a known code")] if codes else []


def _flights_schema(carriers: frozenset[str], airports: frozenset[str]) -> pa.DataFrameSchema:
    delay = pa.Check.in_range(*DELAY)
    return pa.DataFrameSchema(
        {
            "year": pa.Column(checks=pa.Check.in_range(*YEAR)),
            "month": pa.Column(checks=pa.Check.in_range(1, 12)),
            "day": pa.Column(checks=pa.Check.in_range(1, 31)),
            "dep_time": pa.Column(checks=_hhmm(True), nullable=True),
            "sched_dep_time": pa.Column(checks=_hhmm(False)),
            "dep_delay": pa.Column(checks=delay, nullable=True),
            "arr_time": pa.Column(checks=_hhmm(True), nullable=True),
            "sched_arr_time": pa.Column(checks=_hhmm(False)),
            "arr_delay": pa.Column(checks=delay, nullable=True),
            "carrier": pa.Column(checks=[pa.Check.str_matches(CODE), *_known(carriers)]),
            "flight": pa.Column(checks=pa.Check.in_range(*FLIGHT_NUMBER)),
            "tailnum": pa.Column(checks=pa.Check.str_matches(TAILNUM), nullable=True),
            "origin": pa.Column(checks=[pa.Check.str_matches(CODE), *_known(airports)]),
            "dest": pa.Column(checks=pa.Check.str_matches(CODE)),
            "air_time": pa.Column(checks=pa.Check.in_range(*AIR_TIME_MIN), nullable=True),
            "distance": pa.Column(checks=pa.Check.in_range(*DISTANCE_MILES)),
        },
        checks=[
            pa.Check(_date_exists, name="date_exists", error="year-month-day is not a date"),
            pa.Check(
                lambda f: f["dep_time"].isna() == f["dep_delay"].isna(),
                name="dep_time_with_dep_delay",
                error="dep_time and dep_delay must be both present or both missing",
            ),
            pa.Check(
                lambda f: f["arr_delay"].isna() | f["dep_delay"].notna(),
                name="arrival_needs_departure",
                error="arr_delay given for a flight that never departed",
            ),
        ],
    )


def _weather_schema(_: frozenset[str], airports: frozenset[str]) -> pa.DataFrameSchema:
    return pa.DataFrameSchema(
        {
            "origin": pa.Column(checks=[pa.Check.str_matches(CODE), *_known(airports)]),
            "year": pa.Column(checks=pa.Check.in_range(*YEAR)),
            "month": pa.Column(checks=pa.Check.in_range(1, 12)),
            "day": pa.Column(checks=pa.Check.in_range(1, 31)),
            "hour": pa.Column(checks=pa.Check.in_range(0, 23)),
            **{
                name: pa.Column(checks=pa.Check.in_range(*bounds), nullable=True)
                for name, bounds in WEATHER.items()
            },
        },
        checks=[pa.Check(_date_exists, name="date_exists", error="year-month-day is not a date")],
        unique=["origin", "year", "month", "day", "hour"],
        report_duplicates="exclude_first",
    )


def _planes_schema(*_: frozenset[str]) -> pa.DataFrameSchema:
    return pa.DataFrameSchema(
        {
            "tailnum": pa.Column(checks=pa.Check.str_matches(TAILNUM), unique=True),
            "year": pa.Column(checks=pa.Check.in_range(*YEAR), nullable=True),
            "type": pa.Column(nullable=True),
            "manufacturer": pa.Column(nullable=True),
            "model": pa.Column(nullable=True),
            "engines": pa.Column(checks=pa.Check.in_range(0, 16), nullable=True),
            "seats": pa.Column(checks=pa.Check.in_range(1, 1_000), nullable=True),
            "engine": pa.Column(nullable=True),
        },
        report_duplicates="exclude_first",
    )


def _airports_schema(*_: frozenset[str]) -> pa.DataFrameSchema:
    return pa.DataFrameSchema(
        {
            "faa": pa.Column(checks=pa.Check.str_matches(CODE), unique=True),
            "name": pa.Column(nullable=True),
            "lat": pa.Column(checks=pa.Check.in_range(-90, 90)),
            "lon": pa.Column(checks=pa.Check.in_range(-180, 180)),
            "alt": pa.Column(checks=pa.Check.in_range(-1_500, 30_000), nullable=True),
            "tz": pa.Column(checks=pa.Check.in_range(-12, 14), nullable=True),
            "dst": pa.Column(nullable=True),
            "tzone": pa.Column(nullable=True),
        },
        report_duplicates="exclude_first",
    )


def _airlines_schema(*_: frozenset[str]) -> pa.DataFrameSchema:
    return pa.DataFrameSchema(
        {
            "carrier": pa.Column(checks=pa.Check.str_matches(CODE), unique=True),
            "name": pa.Column(),
        },
        report_duplicates="exclude_first",
    )


SCHEMAS: dict[str, TableSchema] = {
    "airlines": TableSchema(
        "airlines", {"carrier": "str", "name": "str"}, _airlines_schema, code_column="carrier"
    ),
    "airports": TableSchema(
        "airports",
        {"faa": "str", "name": "str", "lat": "float", "lon": "float", "alt": "float"}
        | {"tz": "float", "dst": "str", "tzone": "str"},
        _airports_schema,
        code_column="faa",
    ),
    "planes": TableSchema(
        "planes",
        {"tailnum": "str", "year": "int", "type": "str", "manufacturer": "str", "model": "str"}
        | {"engines": "int", "seats": "int", "engine": "str"},
        _planes_schema,
    ),
    "weather": TableSchema(
        "weather",
        {"origin": "str", "year": "int", "month": "int", "day": "int", "hour": "int"}
        | dict.fromkeys(
            ["temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip"], "float"
        )
        | {"pressure": "float", "visib": "float"},
        _weather_schema,
        time_partitioned=True,
    ),
    "flights": TableSchema(
        "flights",
        {"year": "int", "month": "int", "day": "int", "dep_time": "float", "sched_dep_time": "int"}
        | {"dep_delay": "float", "arr_time": "float", "sched_arr_time": "int"}
        | {"arr_delay": "float", "carrier": "str", "flight": "int", "tailnum": "str"}
        | {"origin": "str", "dest": "str", "air_time": "float", "distance": "float"},
        _flights_schema,
        time_partitioned=True,
    ),
}


@dataclass(frozen=True)
class Validated:
    kept: pd.DataFrame
    quarantined: pd.DataFrame  # the raw values of each rejected row, with `reason`


def _parse(raw: pd.DataFrame, kinds: dict[str, Kind]) -> tuple[pd.DataFrame, pd.Series]:
    """Typed columns, and per row the parse failures (empty string when none)."""
    typed = {}
    problems = pd.Series("", index=raw.index, dtype=object)
    for column, kind in kinds.items():
        values = raw[column]
        if kind == "str":
            text = values.astype("string").str.strip()
            typed[column] = text.mask(text == "").astype(object)
            continue
        number = pd.to_numeric(values, errors="coerce").astype("float64")
        bad = number.isna() & values.notna()
        if kind == "int":
            fractional = number.notna() & (number != np.round(number))
            bad |= fractional
            number = number.mask(fractional)
        if bad.any():
            shown = values[bad].astype(str).str.slice(0, 40)
            problems[bad] += column + ": not " + ("an integer" if kind == "int" else "a number")
            problems[bad] += " (" + shown + "); "
            number = number.mask(bad)
        typed[column] = number.astype("Int64") if kind == "int" else number
    return pd.DataFrame(typed, index=raw.index), problems


def _failure_reasons(schema: pa.DataFrameSchema, frame: pd.DataFrame) -> pd.Series:
    """Per row, the rules it broke, as `column: check` strings (empty string when none)."""
    reasons = pd.Series("", index=frame.index, dtype=object)
    try:
        schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as errors:
        cases = errors.failure_cases
        cases = cases[cases["index"].notna()]
        frame_level = cases["schema_context"] == "DataFrameSchema"
        label = np.where(
            frame_level & (cases["check"] != "column_in_dataframe"),
            cases["check"].astype(str),
            cases["column"].astype(str) + ": " + cases["check"].astype(str),
        )
        label = pd.Series(label, index=cases.index).replace(
            {"multiple_fields_uniqueness": "duplicate key"}
        )
        label = label.str.replace("field_uniqueness", "duplicate")
        per_row = (
            pd.DataFrame({"index": cases["index"].astype("int64"), "label": label})
            .drop_duplicates()
            .groupby("index")["label"]
            .agg("; ".join)
        )
        reasons.loc[per_row.index] = per_row + "; "
    return reasons


def validate(
    table: TableSchema,
    raw: pd.DataFrame,
    carriers: frozenset[str] = frozenset(),
    airports: frozenset[str] = frozenset(),
) -> Validated:
    """Split `raw` rows into typed kept rows and quarantined raw rows with their reasons."""
    raw = raw.reset_index(drop=True)
    typed, parse_problems = _parse(raw, table.kinds)
    schema = table.build(carriers, airports)
    reasons = (parse_problems + _failure_reasons(schema, typed)).str.rstrip("; ")
    bad = reasons != ""
    quarantined = raw[bad].astype("string").assign(reason=reasons[bad].astype("string"))
    return Validated(kept=typed[~bad].reset_index(drop=True), quarantined=quarantined)
