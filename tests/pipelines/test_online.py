"""The online store replays the test months' events and gives the offline table's features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.events import flight_events, scheduled_arrivals, to_minutes
from pipelines.layout import DataLayout
from pipelines.online import HOUR, OnlineStore, events_from_bronze
from pipelines.storage import read_parquet_folder
from pipelines.transform import FEATURES, RAW_INPUTS, build_features


def minutes(text: str) -> float:
    return float(to_minutes(pd.Series([pd.Timestamp(text)]))[0])


class Replay:
    """The bronze of a home as a store bootstrapped at `start` and the events after it, up to
    `end` (bronze beyond what the store's horizon and the replay need is left out)."""

    def __init__(self, home: Path, start: str, end: str) -> None:
        layout = DataLayout(home)
        self.start, self.end = minutes(start), minutes(end)
        lo, hi = (
            pd.Timestamp(start) - pd.Timedelta(days=5),
            pd.Timestamp(end) + pd.Timedelta(days=2),
        )
        flights = read_parquet_folder(layout.bronze("flights"))
        when = flights["scheduled_departure"]
        self.flights = flights[(when >= lo) & (when < hi)].reset_index(drop=True)
        weather = read_parquet_folder(layout.bronze("weather"))
        when = weather["time_hour"]
        self.weather = weather[(when >= lo) & (when < hi)].reset_index(drop=True)
        planes = read_parquet_folder(layout.bronze("planes"))
        airports = read_parquet_folder(layout.bronze("airports"))
        self.store = OnlineStore(planes, airports)
        arrivals = scheduled_arrivals(self.flights, airports)
        self.store.load_snapshot(
            flight_events(self.flights, airports), self.weather, self.start, arrivals
        )
        events = events_from_bronze(self.flights, self.weather, airports)
        self.events = events[events["observed"] > self.start].reset_index(drop=True)
        self.offset = 0
        self.table = read_parquet_folder(layout.split("test"))

    def until(self, t: float) -> None:
        """Apply every event observed at or before `t`."""
        observed = self.events["observed"].to_numpy()
        upto = int(np.searchsorted(observed, t, side="right"))
        if upto > self.offset:
            report = self.store.apply(self.events.iloc[self.offset : upto])
            assert not report.refused, report.refused[:5]
            self.offset = upto

    def features_at_departure(self, every: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(online, offline) features of the test table's flights scheduled in [start, end),
        each computed at its scheduled departure from what the store held then; with `every`
        > 1 only the flights of every n-th departure time (every event is still applied)."""
        t = to_minutes(self.table["scheduled_departure"])
        inside = (t >= self.start) & (t < self.end)
        table = self.table[inside].assign(t=t[inside])
        online = []
        times = np.unique(table["t"].to_numpy())[::every]
        table = table[table["t"].isin(times)]
        for when, group in table.sort_values("t").groupby("t", sort=True):
            self.until(when)
            online.append(build_features(group[RAW_INPUTS], self.store.lookups()))
        got = pd.concat(online).loc[table.index]
        return got[FEATURES], table[FEATURES]


def assert_same_features(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    for name in FEATURES:
        left, right = got[name].to_numpy(), expected[name].to_numpy()
        if left.dtype == object or right.dtype == object:
            same = (
                pd.Series(left).fillna("<NA>").to_numpy()
                == pd.Series(right).fillna("<NA>").to_numpy()
            )
        else:
            same = (left == right) | (np.isnan(left.astype(float)) & np.isnan(right.astype(float)))
        assert same.all(), (
            f"{name}: {int((~same).sum())} of {len(same)} differ, e.g. "
            f"online {left[~same][:3]} offline {right[~same][:3]}"
        )


def test_two_days_of_replayed_events_give_the_offline_features(featured_home: Path) -> None:
    replay = Replay(featured_home, "2013-12-01", "2013-12-03")
    got, expected = replay.features_at_departure()
    assert len(got) > 1_000
    assert_same_features(got, expected)
    # the windows were fed by the replay, not by the snapshot alone
    assert (got["origin_dep_count_1_2h"] > 0).mean() > 0.5


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_month_across_a_partition_boundary_replayed_gives_the_offline_features(
    featured_home: Path,
) -> None:
    replay = Replay(featured_home, "2013-11-15", "2013-12-15")
    got, expected = replay.features_at_departure(every=10)  # ~700 of the ~7,000 times
    assert len(got) > 2_000
    assert_same_features(got, expected)
    assert len(replay.store) < 8_000  # bounded by the horizon, not by two months of flights


def test_a_re_sent_event_is_applied_once_and_an_old_one_is_refused(featured_home: Path) -> None:
    replay = Replay(featured_home, "2013-12-01", "2013-12-02")
    batch = replay.events.iloc[:200]
    first = replay.store.apply(batch)
    again = replay.store.apply(batch)
    assert first.applied == 200 and again.applied == 0 and again.duplicates == 200
    old = batch.iloc[:1].assign(id="new-id", observed=replay.start - 80 * HOUR)
    refused = replay.store.apply(old).refused
    assert refused == [(0, "observed", "older than the retention horizon (72 h)")]


def test_a_store_whose_flights_all_aged_out_still_answers(featured_home: Path) -> None:
    """Only weather told for four days: every flight leaves the horizon, and the store's
    lookups (no flight at all) still give features, the weather's hour among them."""
    replay = Replay(featured_home, "2013-12-01", "2013-12-02")
    hours = pd.date_range("2013-12-01 01:00", periods=100, freq="h")
    weather = pd.DataFrame(
        {
            "id": [f"wx-{i}" for i in range(len(hours))],
            "kind": "weather",
            "observed": to_minutes(hours),
            "origin": "EWR",
            "time_hour": to_minutes(hours),
            "temp": 40.0,
        }
    )
    assert replay.store.apply(weather).applied == len(hours)
    assert len(replay.store) == 0
    flight = replay.table[replay.table["origin"] == "EWR"].head(1)[RAW_INPUTS]
    flight = flight.assign(scheduled_departure=hours[-1] + pd.Timedelta(minutes=5))
    features = build_features(flight, replay.store.lookups())
    assert features["temp"].tolist() == [40.0]


def test_lookups_taken_before_events_answer_as_they_did(featured_home: Path) -> None:
    """A request scoring on the lookups it took keeps their answers while the writer applies
    events: the store's codebooks grow under it (a new aircraft, a new flight number get new
    codes), and a key coded after the lookups were built is one they know nothing of."""
    replay = Replay(featured_home, "2013-12-01", "2013-12-03")
    replay.until(minutes("2013-12-01 12:00"))
    before = replay.store.lookups()
    known = set(replay.store.books["tailnum"].codes)
    t = to_minutes(replay.table["scheduled_departure"])
    day = replay.table[(t >= minutes("2013-12-02 00:00")) & (t < minutes("2013-12-03 00:00"))]
    morning = (day["scheduled_departure"].dt.hour >= 6) & (day["scheduled_departure"].dt.hour < 9)
    new_aircraft = ~day["tailnum"].isin(known)
    assert new_aircraft.sum() > 50
    flights = day[morning | new_aircraft][RAW_INPUTS].reset_index(drop=True)
    asked = build_features(flights, before)
    replay.until(minutes("2013-12-02 23:00"))  # their schedules, and a day of outcomes
    assert set(day["tailnum"][new_aircraft].dropna()) <= set(replay.store.books["tailnum"].codes)
    assert_same_features(build_features(flights, before), asked)
    # and the lookups built now know them: their own schedules and the day's windows
    assert not build_features(flights, replay.store.lookups()).equals(asked)


def test_a_rebuild_from_what_changed_equals_one_from_every_row(featured_home: Path) -> None:
    """The store keeps its flights' columns between rebuilds (the flights scheduled since
    appended, the outcomes changed since patched): after every batch, across trims, the
    lookups equal those built from every row again, array for array."""
    replay = Replay(featured_home, "2013-12-01", "2013-12-03")
    store = replay.store
    observed = np.unique(replay.events["observed"].to_numpy())
    trimmed = 0
    for t in observed[:: max(len(observed) // 200, 1)]:
        held = len(store)
        replay.until(t)
        trimmed += len(store) < held
        kept = store.lookups()
        store._from_rows()  # the next rebuild from every row
        again = store.lookups()
        for name in ("origin_departures", "carrier_departures", "dest_arrivals"):
            for part in ("stamps", "cumsum"):
                np.testing.assert_array_equal(
                    getattr(getattr(kept, name), part), getattr(getattr(again, name), part)
                )
        for name in ("origin_schedule", "tail_schedule", "own_events"):
            np.testing.assert_array_equal(getattr(kept, name).stamps, getattr(again, name).stamps)
        for name in ("tail_schedule", "own_events"):
            np.testing.assert_array_equal(getattr(kept, name).values, getattr(again, name).values)
    assert trimmed  # the horizon moved: rows left between rebuilds
