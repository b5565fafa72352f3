"""Joins against rows looked up by hand in the source tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.events import flight_events
from pipelines.lookups import WEATHER_COLUMNS, Codebook, KeyedTimeTable, Lookups, PreviousIndex
from pipelines.transform import build_features


@pytest.fixture(scope="module")
def sample(bundled: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    flights = bundled["flights"]
    rows = flights.sample(300, random_state=3).reset_index(drop=True)
    lookups = Lookups.build(
        bundled["weather"],
        bundled["planes"],
        bundled["airports"],
        flight_events(flights, bundled["airports"]),
    )
    return rows, build_features(rows, lookups)


def test_weather_is_the_origin_at_the_scheduled_hour(bundled, sample) -> None:
    rows, features = sample
    weather = bundled["weather"]
    for i, flight in rows.iterrows():
        when = flight["scheduled_departure"]
        match = weather[
            (weather["origin"] == flight["origin"])
            & (weather["year"] == when.year)
            & (weather["month"] == when.month)
            & (weather["day"] == when.day)
            & (weather["hour"] == when.hour)
        ]
        expected = (
            match[WEATHER_COLUMNS].iloc[0] if len(match) else pd.Series(np.nan, WEATHER_COLUMNS)
        )
        got = features.loc[i, WEATHER_COLUMNS].astype(float)
        np.testing.assert_array_equal(got.to_numpy(), expected.to_numpy(float), err_msg=str(i))


def test_plane_and_destination_by_key(bundled, sample) -> None:
    rows, features = sample
    planes = bundled["planes"].set_index("tailnum")
    airports = bundled["airports"].set_index("faa")
    unknown_tail = unknown_dest = 0
    for i, flight in rows.iterrows():
        got = features.loc[i]
        if flight["tailnum"] in planes.index:
            plane = planes.loc[flight["tailnum"]]
            assert got["plane_manufacturer"] == plane["manufacturer"]
            assert got["plane_seats"] == plane["seats"]
            if pd.isna(plane["year"]):
                assert np.isnan(got["plane_age"])
            else:
                assert got["plane_age"] == flight["scheduled_departure"].year - plane["year"]
        else:
            unknown_tail += 1
            assert pd.isna(got["plane_manufacturer"])
            assert np.isnan(got["plane_seats"])
        if flight["dest"] in airports.index:
            airport = airports.loc[flight["dest"]]
            assert (got["dest_lat"], got["dest_lon"], got["dest_tz"]) == (
                airport["lat"],
                airport["lon"],
                airport["tz"],
            )
        else:
            unknown_dest += 1
            assert np.isnan(got["dest_lat"])
    assert unknown_tail > 0, "the sample should include flights whose plane is unknown"


def test_calendar_features(sample) -> None:
    rows, features = sample
    when = rows["scheduled_departure"]
    np.testing.assert_array_equal(features["month"], when.dt.month.astype(float))
    np.testing.assert_array_equal(features["day_of_week"], when.dt.day_of_week.astype(float))
    np.testing.assert_allclose(features["dep_hour"], when.dt.hour + when.dt.minute / 60)
    thanksgiving = pd.DataFrame(
        {
            "carrier": ["UA"],
            "flight": [1],
            "tailnum": [None],
            "origin": ["EWR"],
            "dest": ["ORD"],
            "scheduled_departure": [pd.Timestamp("2013-11-26 09:00")],
        }
    )
    lookups_features = build_features(thanksgiving, _empty_lookups())
    assert lookups_features.loc[0, "days_to_holiday"] == 2  # Thanksgiving was 2013-11-28


def _empty_lookups() -> Lookups:
    from tests.pipelines.test_leakage import AIRPORTS, PLANES, _weather, hand_made_flights

    flights = hand_made_flights()
    return Lookups.build(_weather(), PLANES, AIRPORTS, flight_events(flights, AIRPORTS))


def test_equal_stamps_sort_by_their_values_whatever_order_they_came_in() -> None:
    """Two legs of one aircraft at the same scheduled time, and two weather rows for one hour:
    the lookups answer the same whichever row a table or a store holds first."""
    book = Codebook(["N1", "EWR"])
    scheduled = np.array([600.0, 600.0, 300.0])
    departed = np.array([640.0, 610.0, 305.0])
    delay = departed - scheduled
    answers = []
    for order in ([0, 1, 2], [1, 0, 2], [2, 1, 0]):
        tail = PreviousIndex.build(
            book, np.zeros(3, dtype="int64"), scheduled[order], departed[order], delay[order]
        )
        hour = KeyedTimeTable.build(
            book,
            np.ones(3, dtype="int64"),
            np.array([60.0, 60.0, 120.0])[order],
            np.array([[1.0, 2.0], [1.0, np.nan], [3.0, 4.0]])[order],
            ["a", "b"],
        )
        before = np.array([700.0])
        answers.append(
            (
                np.concatenate(tail.previous(np.array(["N1"], dtype=object), before)),
                hour.at(np.array(["EWR"], dtype=object), np.array([60.0])),
            )
        )
    for previous, weather in answers[1:]:
        np.testing.assert_array_equal(previous, answers[0][0])
        np.testing.assert_array_equal(weather, answers[0][1])
    np.testing.assert_array_equal(answers[0][0], [600.0, 640.0, 40.0])  # the later one last
