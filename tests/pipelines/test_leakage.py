"""Point-in-time correctness: no feature sees what happened at or after its prediction time."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from pipelines.events import flight_events
from pipelines.ingest import local_time
from pipelines.lookups import Lookups
from pipelines.transform import FEATURES, build_features

AIRPORTS = pd.DataFrame(
    {
        "faa": ["EWR", "JFK", "LGA", "ORD", "BOS"],
        "name": ["Newark", "Kennedy", "LaGuardia", "O'Hare", "Logan"],
        "lat": [40.69, 40.64, 40.78, 41.98, 42.36],
        "lon": [-74.17, -73.78, -73.87, -87.90, -71.01],
        "alt": [18.0, 13.0, 22.0, 668.0, 19.0],
        "tz": [-5.0, -5.0, -5.0, -6.0, -5.0],
        "dst": ["A"] * 5,
        "tzone": ["America/New_York"] * 3 + ["America/Chicago", "America/New_York"],
    }
)
PLANES = pd.DataFrame(
    {
        "tailnum": ["N1", "N2", "N3"],
        "year": [2000, 2010, 1995],
        "type": ["Fixed wing multi engine"] * 3,
        "manufacturer": ["BOEING", "AIRBUS", "EMBRAER"],
        "model": ["737", "A320", "ERJ"],
        "engines": [2, 2, 2],
        "seats": [150, 180, 50],
        "engine": ["Turbo-fan"] * 3,
    }
)


def _weather() -> pd.DataFrame:
    hours = pd.date_range("2013-01-15 00:00", "2013-01-15 23:00", freq="h")
    frame = pd.DataFrame({"origin": "EWR", "year": 2013, "month": 1, "day": 15, "hour": hours.hour})
    for column in ("dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip"):
        frame[column] = 1.0
    frame["temp"] = np.where(hours.hour == 12, 30.0, 99.0)
    frame["pressure"], frame["visib"] = 1012.0, 10.0
    frame["time_hour"] = local_time(frame, hour="hour")
    return frame


# carrier, flight, tailnum, origin, dest, sched_dep (HHMM), dep_delay, sched_arr, arr_delay
ROWS = [
    ("UA", 100, "N1", "EWR", "ORD", 1200, -4, 1330, -2),  # X: leaves 4 minutes early
    ("UA", 1, "N9", "EWR", "BOS", 900, 70, 1000, 60),  # A: leaves 10:10 -> 1-2h window
    ("AA", 2, "N8", "EWR", "BOS", 1100, 59, 1200, 50),  # B: leaves 11:59 -> 0-1h window
    ("AA", 3, "N7", "EWR", "BOS", 1130, 30, 1230, 20),  # C: leaves 12:00 = t -> never seen
    ("DL", 4, "N6", "EWR", "BOS", 1210, -15, 1310, -10),  # D: scheduled after t, left 11:55
    ("B6", 5, "N5", "EWR", "BOS", 830, 0, 930, 0),  # E: leaves 08:30 -> 2-4h window
    ("B6", 6, "N4", "EWR", "BOS", 1115, None, 1215, None),  # F: cancelled
    ("UA", 7, "N1", "JFK", "BOS", 1030, 20, 1130, 15),  # N1's previous flight, left 10:50
    ("UA", 8, "N2", "EWR", "BOS", 1200, 5, 1300, 0),  # Y: N2 at 12:00
    ("UA", 9, "N2", "LGA", "BOS", 1140, 45, 1240, 40),  # N2's previous: still on the ground
    ("EV", 10, "N3", "EWR", "BOS", 1300, -10, 1400, -5),  # Z: N3, left early; nothing before
    ("EV", 11, "N3", "EWR", "BOS", 1400, -70, 1500, -60),  # N3's next flight, left 12:50
    ("UA", 12, "N10", "EWR", "ORD", 700, 0, 830, 10),  # G: lands ORD 09:40 New York time
    ("AA", 13, "N11", "LGA", "ORD", 600, 0, 700, 5),  # H: lands ORD 08:05 New York time
]


def hand_made_flights() -> pd.DataFrame:
    columns = ["carrier", "flight", "tailnum", "origin", "dest", "sched_dep_time"]
    columns += ["dep_delay", "sched_arr_time", "arr_delay"]
    frame = pd.DataFrame(ROWS, columns=columns).astype({"dep_delay": float, "arr_delay": float})
    frame["year"], frame["month"], frame["day"] = 2013, 1, 15
    frame["distance"] = 700.0
    frame["scheduled_departure"] = local_time(frame, frame["sched_dep_time"])
    return frame


def features_of(flights: pd.DataFrame, weather: pd.DataFrame | None = None) -> pd.DataFrame:
    weather = _weather() if weather is None else weather
    events = flight_events(flights, AIRPORTS)
    return build_features(flights, Lookups.build(weather, PLANES, AIRPORTS, events))


def test_hand_made_aggregates_use_only_what_was_observed_strictly_before() -> None:
    features = features_of(hand_made_flights())
    x = features.iloc[0]
    assert x["origin_dep_count_0_1h"] == 2  # B (59) and D (-15); not C (at t), not X itself
    assert x["origin_dep_delay_mean_0_1h"] == pytest.approx(22.0)
    assert (x["origin_dep_count_1_2h"], x["origin_dep_delay_mean_1_2h"]) == (1, 70.0)
    assert (x["origin_dep_count_2_4h"], x["origin_dep_delay_mean_2_4h"]) == (1, 0.0)
    assert (x["carrier_dep_count_1_3h"], x["carrier_dep_delay_mean_1_3h"]) == (2, 45.0)  # A, N1's
    assert (x["dest_arr_count_1_3h"], x["dest_arr_delay_mean_1_3h"]) == (1, 10.0)  # G
    assert (x["dest_arr_count_3_4h"], x["dest_arr_delay_mean_3_4h"]) == (1, 5.0)  # H
    assert x["tail_prev_hours_since"] == pytest.approx(1.5)
    assert (x["tail_prev_departed"], x["tail_prev_dep_delay"]) == (1.0, 20.0)
    assert x["origin_scheduled_count_hour"] == 3  # X, D and Y are scheduled 12:00-13:00
    assert x["temp"] == 30.0  # the scheduled hour's weather, not the hour before


def test_previous_departure_still_on_the_ground_has_no_delay_only_an_overdue_time() -> None:
    y = features_of(hand_made_flights()).iloc[8]
    assert y["tail_prev_departed"] == 0.0
    assert np.isnan(y["tail_prev_dep_delay"])
    assert y["tail_prev_overdue_min"] == pytest.approx(20.0)


def test_an_early_departure_is_never_its_own_previous_departure() -> None:
    """The 0.85-AUC leak: counting the flight itself because it left before its schedule."""
    z = features_of(hand_made_flights()).iloc[10]
    assert np.isnan(z["tail_prev_hours_since"])
    assert np.isnan(z["tail_prev_dep_delay"])


def test_own_early_departure_is_not_in_its_own_origin_aggregate() -> None:
    flights = hand_made_flights()
    base = features_of(flights).iloc[0]
    flights.loc[0, "dep_delay"] = -30.0  # X now leaves at 11:30, inside its own 0-1h window
    moved = features_of(flights).iloc[0]
    pd.testing.assert_series_equal(base, moved)


def _perturb_after(
    flights: pd.DataFrame, airports: pd.DataFrame, cutoff: float, rng: np.random.Generator
) -> pd.DataFrame:
    """Change every delay and actual time not yet observable at `cutoff` (minutes)."""
    events = flight_events(flights, airports)
    out = flights.copy()
    unseen_dep = ~(events["departed_at"].to_numpy() < cutoff)
    earliest = cutoff - events["scheduled"].to_numpy()
    new_dep = np.maximum(earliest, -30) + rng.integers(0, 300, len(out))
    cancel = rng.random(len(out)) < 0.1
    dep = np.where(unseen_dep, np.where(cancel, np.nan, new_dep), out["dep_delay"].to_numpy(float))
    out["dep_delay"] = dep
    on_time = flight_events(flights.assign(dep_delay=0.0, arr_delay=0.0), airports)
    sched_arr = on_time["arrived_at"].to_numpy()  # NaN where the destination's zone is unknown
    unseen_arr = ~(events["arrived_at"].to_numpy() < cutoff)
    new_arr = np.maximum(cutoff - sched_arr, -60) + rng.integers(0, 300, len(out))
    new_arr = np.where(np.isnan(new_arr), rng.integers(-60, 300, len(out)), new_arr)
    arr = np.where(unseen_arr, new_arr, out["arr_delay"].to_numpy(float))
    out["arr_delay"] = np.where(np.isnan(dep), np.nan, arr)
    for column in ("dep_time", "arr_time", "air_time"):
        if column in out:
            out[column] = np.where(unseen_dep, rng.integers(1, 2359, len(out)), out[column])
    return out


@pytest.fixture(scope="module")
def three_days(bundled: dict[str, pd.DataFrame]) -> pd.DataFrame:
    flights = bundled["flights"]
    day = flights["scheduled_departure"]
    window = (day >= "2013-02-07") & (day < "2013-02-10")  # includes a snowstorm
    return flights[window].reset_index(drop=True)


@pytest.fixture(scope="module")
def features(bundled: dict[str, pd.DataFrame]) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """Flights -> features, with the event log rebuilt from those same flights."""
    dims = (bundled["weather"], bundled["planes"], bundled["airports"])

    def compute(flights: pd.DataFrame) -> pd.DataFrame:
        events = flight_events(flights, bundled["airports"])
        return build_features(flights, Lookups.build(*dims, events))

    return compute


def test_perturbing_everything_observed_after_a_cutoff_changes_no_earlier_feature(
    bundled: dict[str, pd.DataFrame], three_days: pd.DataFrame, features
) -> None:
    rng = np.random.default_rng(7)
    base = features(three_days)
    scheduled = three_days["scheduled_departure"]
    for cutoff_time in rng.choice(scheduled.unique(), 8, replace=False):
        cutoff = float(pd.Timestamp(cutoff_time).value // 60_000_000_000)
        perturbed = _perturb_after(three_days, bundled["airports"], cutoff, rng)
        assert (perturbed["dep_delay"].fillna(-999) != three_days["dep_delay"].fillna(-999)).any()
        after = features(perturbed)
        seen = (scheduled <= cutoff_time).to_numpy()
        pd.testing.assert_frame_equal(base[seen], after[seen], check_exact=True)


def test_perturbing_a_flights_own_outcome_changes_none_of_its_features(
    three_days: pd.DataFrame, features
) -> None:
    rng = np.random.default_rng(11)
    base = features(three_days)
    for row in rng.choice(len(three_days), 25, replace=False):
        flights = three_days.copy()
        flights.loc[row, "dep_delay"] = float(rng.choice([-25, -5, 0, 45, 300]))
        flights.loc[row, "arr_delay"] = float(rng.integers(-40, 300))
        flights.loc[row, ["dep_time", "arr_time", "air_time"]] = [1, 1, 1]
        pd.testing.assert_series_equal(features(flights).iloc[row], base.iloc[row])


def test_features_never_read_post_departure_columns(three_days: pd.DataFrame, bundled) -> None:
    """Drop every post-departure column of the flights being scored: same features."""
    dims = (bundled["weather"], bundled["planes"], bundled["airports"])
    lookups = Lookups.build(*dims, flight_events(three_days, bundled["airports"]))
    raw = three_days[["carrier", "flight", "tailnum", "origin", "dest", "scheduled_departure"]]
    with_outcomes = build_features(three_days, lookups)
    pd.testing.assert_frame_equal(
        build_features(raw.assign(distance=three_days["distance"]), lookups), with_outcomes
    )
    assert list(with_outcomes.columns) == FEATURES
