"""Events as clients send them: the bronze data's events survive the round trip through JSON
exactly, each bad event is refused with its index, field and reason while the rest are kept,
and a value ingest quarantines is a value the online path refuses (one set of rules)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.event_validation import as_records, validate_events
from pipelines.layout import DataLayout
from pipelines.online import EVENT_FIELDS, OnlineStore, events_from_bronze
from pipelines.rules import WEATHER
from pipelines.schemas import SCHEMAS, validate
from pipelines.storage import read_parquet_folder

SCHEDULED = {
    "id": "s1",
    "kind": "scheduled",
    "carrier": "UA",
    "flight": 1545,
    "origin": "EWR",
    "scheduled_departure": "2013-12-02T17:15:00",
    "dest": "IAH",
    "tailnum": "N14228",
    "scheduled_arrival": "2013-12-02T20:30:00",
    "distance": 1400,
    "observed": "2013-12-01T17:15:00",
}
KEY = {k: SCHEDULED[k] for k in ("carrier", "flight", "origin", "scheduled_departure")}


@pytest.fixture(scope="module")
def bronze(ingested_home: Path) -> dict[str, pd.DataFrame]:
    layout = DataLayout(ingested_home)
    flights = read_parquet_folder(layout.bronze("flights"))
    weather = read_parquet_folder(layout.bronze("weather"))
    days = (pd.Timestamp("2013-12-01"), pd.Timestamp("2013-12-03"))
    return {
        "flights": flights[flights["scheduled_departure"].between(*days)].reset_index(drop=True),
        "weather": weather[weather["time_hour"].between(*days)].reset_index(drop=True),
        "airports": read_parquet_folder(layout.bronze("airports")),
        "planes": read_parquet_folder(layout.bronze("planes")),
    }


def _same(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    for name in EVENT_FIELDS:
        left, right = got[name].to_numpy(), expected[name].to_numpy()
        if name in ("id", "kind", "carrier", "origin", "dest", "tailnum"):
            same = pd.Series(left).fillna("-").to_numpy() == pd.Series(right).fillna("-").to_numpy()
        else:
            left, right = left.astype(float), right.astype(float)
            same = (left == right) | (np.isnan(left) & np.isnan(right))
        assert same.all(), f"{name}: {left[~same][:3]} != {right[~same][:3]}"


def test_bronze_events_survive_the_round_trip_through_json(
    bronze: dict[str, pd.DataFrame],
) -> None:
    events = events_from_bronze(bronze["flights"], bronze["weather"], bronze["airports"])
    assert set(events["kind"]) == {
        "scheduled",
        "departed",
        "arrived",
        "cancelled",
        "diverted",
        "weather",
    }
    airports = frozenset(bronze["airports"]["faa"])
    checked = validate_events(as_records(events), airports=airports)
    assert checked.refused == []
    _same(checked.events, events)


def test_a_bad_event_is_refused_with_index_field_and_reason_and_the_rest_are_kept() -> None:
    batch = [
        SCHEDULED,
        {**SCHEDULED, "id": "s2", "origin": "XXX"},  # not an airport the model knows
        "not an object",
        {**KEY, "id": "d1", "kind": "departed", "at": "2013-12-02T17:30:00"},
        {**KEY, "id": "d2", "kind": "departed", "at": "2013-12-02T17:30:00", "gate": "C9"},
        {**KEY, "id": "d3", "kind": "departed"},
        {**KEY, "id": "w", "kind": "landed"},
        {**KEY, "id": "d4", "kind": "departed", "at": "2013-12-02T17:30", "observed": "17:00"},
        {**KEY, "id": "d5", "kind": "departed", "at": "2013-12-02T17:30:00", "tailnum": "N1"},
        {"id": "h", "kind": "weather", "origin": "EWR", "time_hour": "2013-12-02T17:20:00"},
        {**KEY, "id": "", "kind": "cancelled"},
    ]
    checked = validate_events(batch, airports=frozenset({"EWR", "JFK", "LGA"}))
    assert checked.indices == [0, 3]
    assert list(checked.events["id"]) == ["s1", "d1"]
    assert checked.refused == [
        (1, "origin", "not a known code"),
        (2, "", "an event is a JSON object"),
        (4, "gate", "not a field of any event"),
        (5, "at", "required for a departed event"),
        (6, "kind", "one of scheduled, departed, arrived, cancelled, diverted, weather"),
        (7, "observed", "an ISO 8601 time"),
        (8, "tailnum", "not a field of a departed event"),
        (9, "time_hour", "an hour: minutes and seconds zero"),
        (10, "id", "a string of 1 to 128 characters"),
    ]


def test_times_with_an_offset_are_read_on_new_yorks_clock() -> None:
    local = validate_events([SCHEDULED]).events
    utc = {**SCHEDULED, "scheduled_departure": "2013-12-02T22:15:00+00:00"}
    assert validate_events([utc]).events["scheduled"][0] == local["scheduled"][0]


def test_an_event_observed_before_its_fact_is_refused() -> None:
    early = {**KEY, "id": "d", "kind": "departed", "at": "2013-12-02T17:30:00"}
    early["observed"] = "2013-12-02T17:29:00"  # a departure known a minute before it happened
    assert validate_events([early]).refused == [(0, "observed", "before the fact it reports")]


def _raw_flight(**changes: object) -> pd.DataFrame:
    row = {"year": 2013, "month": 12, "day": 2, "dep_time": 1730, "sched_dep_time": 1715}
    row |= {"dep_delay": 15, "arr_time": 2040, "sched_arr_time": 2030, "arr_delay": 10}
    row |= {"carrier": "UA", "flight": 1545, "tailnum": "N14228", "origin": "EWR"}
    row |= {"dest": "IAH", "air_time": 200, "distance": 1400} | changes
    return pd.DataFrame([row])


@pytest.mark.parametrize(
    ("bronze_change", "event", "field"),
    [  # the same bad fact, as a bronze row and as an event
        (
            {"dep_delay": 1500, "dep_time": 1835},  # 25 hours late
            {**KEY, "kind": "departed", "at": "2013-12-03T18:15:00"},
            "at",
        ),
        ({"flight": 0}, {**SCHEDULED, "flight": 0}, "flight"),
        ({"distance": 20_000}, {**SCHEDULED, "distance": 20_000}, "distance"),
        ({"tailnum": "N-1"}, {**SCHEDULED, "tailnum": "N-1"}, "tailnum"),
        ({"carrier": "united"}, {**SCHEDULED, "carrier": "united"}, "carrier"),
    ],
)
def test_what_ingest_quarantines_the_online_path_refuses(
    bronze_change: dict, event: dict, field: str
) -> None:
    assert validate(SCHEMAS["flights"], _raw_flight()).quarantined.empty  # the row is fine...
    quarantined = validate(SCHEMAS["flights"], _raw_flight(**bronze_change)).quarantined
    assert len(quarantined) == 1  # ...until the change
    assert validate_events([{**event, "id": "e"}]).refused[0][1] == field
    assert validate_events([{**event, "id": "e", **_undo(event, field)}]).refused == []


def _undo(event: dict, field: str) -> dict:
    good = {"at": "2013-12-02T17:30:00", "flight": 1545, "distance": 1400}
    good |= {"tailnum": "N14228", "carrier": "UA"}
    return {field: good[field]}


@pytest.mark.parametrize(("name", "bad"), [("temp", 200.0), ("humid", -1.0), ("visib", 1e9)])
def test_a_weather_reading_out_of_range_is_refused_as_ingest_quarantines_it(
    name: str, bad: float
) -> None:
    raw = pd.DataFrame([{"origin": "EWR", "year": 2013, "month": 12, "day": 2, "hour": 17}])
    raw = raw.assign(**dict.fromkeys(WEATHER, np.nan))
    assert validate(SCHEMAS["weather"], raw).quarantined.empty
    assert len(validate(SCHEMAS["weather"], raw.assign(**{name: bad})).quarantined) == 1
    hour = {"id": "w", "kind": "weather", "origin": "EWR", "time_hour": "2013-12-02T17:00:00"}
    assert validate_events([hour | {name: bad}]).refused[0][1] == name
    assert validate_events([hour | {name: 50.0}]).refused == []


def test_the_store_refuses_an_arrival_whose_delay_is_out_of_bounds(
    bronze: dict[str, pd.DataFrame],
) -> None:
    store = OnlineStore(bronze["planes"], bronze["airports"])
    batch = [
        SCHEDULED,
        {**KEY, "id": "a1", "kind": "arrived", "at": "2013-12-03T21:00:00"},  # a day and a half
        {**KEY, "id": "a2", "kind": "arrived", "at": "2013-12-02T20:45:00"},
    ]
    checked = validate_events(batch)
    assert checked.refused == []
    report = store.apply(checked.events)
    assert report.applied == 2
    assert report.refused == [(1, "at", "an arrival delay of 1470 min is outside (-180, 1440)")]
