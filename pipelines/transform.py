"""The per-flight transform: a raw flight plus the lookups -> its features.

The one piece of feature logic in the project. Dask maps it over month partitions offline and
the server calls it per request, so training and serving cannot drift apart. It only ever sees
what is known at the prediction time (the scheduled departure): the flight's own schedule, the
dimension tables, and events that became observable strictly before that time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.events import flight_identity, to_minutes
from pipelines.lookups import (
    AIRPORT_NUMERIC,
    PLANE_NUMERIC,
    PLANE_TEXT,
    WEATHER_COLUMNS,
    Lookups,
)

HOUR = 60
# The raw fields of a flight, as the API takes them (distance is optional there).
RAW_INPUTS = ["carrier", "flight", "tailnum", "origin", "dest", "scheduled_departure", "distance"]
# Optional: the moment the features know up to (what is observed strictly before it counts);
# absent or later, the scheduled departure, the offline table's point in time
AS_OF = "as_of"

# (name, key, index, start hours before, end hours before): the mean and count of the values of
# events observed in [t - start, t - end), the flight's own event excluded. OWN_EVENT names the
# flight's own event time and value, subtracted when they fall in the window.
WINDOWS: list[tuple[str, str, str, float, float]] = [
    ("origin_dep", "origin", "origin_departures", 1, 0),
    ("origin_dep", "origin", "origin_departures", 2, 1),
    ("origin_dep", "origin", "origin_departures", 4, 2),
    ("carrier_dep", "carrier", "carrier_departures", 3, 1),
    ("dest_arr", "dest", "dest_arrivals", 3, 1),
    ("dest_arr", "dest", "dest_arrivals", 4, 3),
]
OWN_EVENT = {"dep": ("departed_at", "dep_delay"), "arr": ("arrived_at", "arr_delay")}
TAIL_LOOKBACK_H = 48  # an aircraft's "previous departure" older than this is no signal
HOLIDAY_CAP_DAYS = 60  # `days_to_holiday` stops counting here: a holiday further off is no signal
# The longest any feature looks back or forward from t, in event time. The Dask graph hands
# each month partition this much of its neighbours' events; the delay bounds in
# `pipelines.schemas` (at most a day late, 3 hours early) are what make it sufficient.
LOOKBACK_H = 72
LOOKAHEAD_H = 3


def _window_names(prefix: str, start: float, end: float) -> tuple[str, str]:
    span = f"{end:g}_{start:g}h"
    return f"{prefix}_delay_mean_{span}", f"{prefix}_count_{span}"


@dataclass(frozen=True)
class WindowGroup:
    """The windows of WINDOWS that query one index, with what each batch would recompute:
    the window edges in minutes before t and the feature names, in order."""

    prefix: str
    key: str
    index: str
    own: tuple[str, str]  # the flight's own event time and value (OWN_EVENT)
    starts: np.ndarray  # minutes before t, one per window
    ends: np.ndarray
    names: list[tuple[str, str]]  # (mean, count) per window


def _window_group(prefix: str, key: str, index: str) -> WindowGroup:
    windows = [(w[3], w[4]) for w in WINDOWS if w[2] == index]
    return WindowGroup(
        prefix,
        key,
        index,
        OWN_EVENT[prefix.rsplit("_", 1)[1]],
        starts=np.array([int(start * HOUR) for start, _ in windows]),
        ends=np.array([int(end * HOUR) for _, end in windows]),
        names=[_window_names(prefix, start, end) for start, end in windows],
    )


WINDOW_GROUPS = [
    _window_group(*group) for group in dict.fromkeys((w[0], w[1], w[2]) for w in WINDOWS)
]


CATEGORICAL = ["carrier", "origin", "dest"] + [f"plane_{c}" for c in PLANE_TEXT]
NUMERICAL = [
    "month",
    "day_of_week",
    "day_of_year",
    "dep_hour",
    "days_to_holiday",
    "distance",
    *WEATHER_COLUMNS,
    "plane_age",
    "plane_seats",
    "plane_engines",
    *[f"dest_{c}" for c in AIRPORT_NUMERIC],
    *[name for w in WINDOWS for name in _window_names(w[0], w[3], w[4])],
    "tail_prev_hours_since",
    "tail_prev_departed",
    "tail_prev_dep_delay",
    "tail_prev_overdue_min",
    "origin_scheduled_count_hour",
]
FEATURES = CATEGORICAL + NUMERICAL


Columns = Mapping[str, np.ndarray]  # raw inputs by name, one array per field


SMALL = 512  # fewer values than this: plain Python beats pandas' per-call overhead


def _text(columns: Columns, name: str, rows: int) -> np.ndarray:
    """Object array with None for missing (absent column, None, NaN)."""
    if name not in columns:
        return np.full(rows, None, dtype=object)
    values = np.asarray(columns[name], dtype=object)
    if len(values) < SMALL:  # the request path: strings and None, pd.isna only for the rest
        out = np.empty(len(values), dtype=object)
        out[:] = [v if type(v) is str or v is None or not pd.isna(v) else None for v in values]
        return out
    return np.where(pd.isna(values), None, values).astype(object)


def _number(columns: Columns, name: str, rows: int) -> np.ndarray:
    """float64 with NaN for missing or unparseable values."""
    if name not in columns:
        return np.full(rows, np.nan)
    values = np.asarray(columns[name])
    if values.dtype.kind in "fiub":
        return values.astype("float64")
    return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(
        "float64", na_value=np.nan
    )


def _calendar(minutes: np.ndarray) -> dict[str, np.ndarray]:
    """Calendar parts of naive local minutes since the epoch, with numpy's datetime64."""
    stamp = minutes.astype("datetime64[m]")
    day = stamp.astype("datetime64[D]")
    month = day.astype("datetime64[M]")
    year = day.astype("datetime64[Y]")
    minute_of_day = (stamp - day).astype("int64")
    return {
        "year": year.astype("int64") + 1970.0,
        "month": (month.astype("int64") % 12 + 1).astype("float64"),
        "day_of_week": ((day.astype("int64") + 3) % 7).astype("float64"),  # 1970-01-01: Thu
        "day_of_year": ((day - year).astype("int64") + 1).astype("float64"),
        "dep_hour": minute_of_day / 60,
    }


def build_features(flights: pd.DataFrame, lookups: Lookups) -> pd.DataFrame:
    """Features of each flight, in input order; NaN where a value is unknown."""
    columns = {name: flights[name].to_numpy() for name in RAW_INPUTS if name in flights}
    out = feature_arrays(columns, lookups, len(flights))
    return pd.DataFrame({name: out[name] for name in FEATURES}, index=flights.index)


def known_until(columns: Columns) -> np.ndarray:
    """Per flight, minutes: the earlier of its `as_of` (when given) and its departure."""
    t = to_minutes(columns["scheduled_departure"])
    if AS_OF not in columns:
        return t
    as_of = to_minutes(columns[AS_OF])
    return np.where(as_of < t, as_of, t)  # NaN (not given): the departure


def feature_arrays(columns: Columns, lookups: Lookups, rows: int) -> dict[str, np.ndarray]:
    """The transform on plain arrays: what the server runs per micro-batch, with no pandas
    objects on the way, and what `build_features` wraps for the offline table.

    Each flight's features are at its scheduled departure `t`, from what was observed
    strictly before `known_until` (t itself unless an earlier `as_of` is given): the windows
    end there at the latest, the hour's weather is known from its hour on, the aircraft's
    previous leg counts as departed only if it left before then."""
    t = to_minutes(columns["scheduled_departure"]).astype("int64")
    known = known_until(columns).astype("int64")
    carrier, origin, dest, tail = (
        _text(columns, c, rows) for c in ("carrier", "origin", "dest", "tailnum")
    )
    calendar = _calendar(t)
    out: dict[str, np.ndarray] = {
        "carrier": carrier,
        "origin": origin,
        "dest": dest,
        "month": calendar["month"],
        "day_of_week": calendar["day_of_week"],
        "day_of_year": calendar["day_of_year"],
        "dep_hour": calendar["dep_hour"],
    }
    day = t // (24 * HOUR)
    pos = np.searchsorted(lookups.holidays, day)
    pos = np.minimum(np.maximum(pos, 1), len(lookups.holidays) - 1)
    nearest = np.minimum(
        np.abs(lookups.holidays[pos] - day), np.abs(day - lookups.holidays[pos - 1])
    )
    out["days_to_holiday"] = np.minimum(nearest, HOLIDAY_CAP_DAYS).astype("float64")
    out["distance"] = _number(columns, "distance", rows)

    hour_start = t - t % HOUR
    weather = lookups.weather.at(origin, hour_start)
    weather[hour_start > known] = np.nan  # not observed yet at the as-of time
    for i, name in enumerate(lookups.weather.columns):
        out[name] = weather[:, i]

    plane = lookups.planes.take(tail, PLANE_TEXT + PLANE_NUMERIC)
    for name in PLANE_TEXT:
        out[f"plane_{name}"] = plane[name]
    out["plane_age"] = calendar["year"] - plane["year"]
    out["plane_seats"] = plane["seats"]
    out["plane_engines"] = plane["engines"]
    for name, values in lookups.airports.take(dest, AIRPORT_NUMERIC).items():
        out[f"dest_{name}"] = values

    keys = {"origin": origin, "carrier": carrier, "dest": dest}
    number = _number(columns, "flight", rows)
    # Aggregates over other flights must not count the flight itself: one that left five
    # minutes early would otherwise feed its own departure delay into its features.
    own_events = lookups.own_events
    own_values = own_events.at(flight_identity(carrier, number, origin), t)
    own = dict(zip(own_events.columns, own_values.T, strict=True))
    for group in WINDOW_GROUPS:  # one search per index for all of its windows
        lo = t[:, None] - group.starts
        hi = np.maximum(lo, np.minimum(t[:, None] - group.ends, known[:, None]))
        count, total = getattr(lookups, group.index).windows(keys[group.key], lo, hi)
        at, value = (own[c][:, None] for c in group.own)
        mine = (at >= lo) & (at < hi) & ~np.isnan(value) & (count > 0)
        total = total - np.where(mine, value, 0.0)
        count = count - mine
        # count >= 1 wherever the quotient is kept, and the sums hold no NaN
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        for j, (mean_name, count_name) in enumerate(group.names):
            out[mean_name] = mean[:, j]
            out[count_name] = count[:, j]

    prev_sched, prev_departed_at, prev_delay = lookups.tail_schedule.previous(tail, t)
    since = t - prev_sched
    recent = since <= TAIL_LOOKBACK_H * HOUR  # False for NaN
    # Known only if it left strictly before t; "left early" never makes the flight its own past.
    departed = recent & (prev_departed_at < known)
    out["tail_prev_hours_since"] = np.where(recent, since / HOUR, np.nan)
    out["tail_prev_departed"] = np.where(recent, departed.astype("float64"), np.nan)
    out["tail_prev_dep_delay"] = np.where(departed, prev_delay, np.nan)
    out["tail_prev_overdue_min"] = np.where(recent, np.where(departed, 0.0, since), np.nan)

    count, _ = lookups.origin_schedule.window(origin, hour_start, hour_start + HOUR)
    out["origin_scheduled_count_hour"] = count
    return out
