"""Flight events on one clock: when each departure and arrival became observable in New York.

A departure delay is known once the flight has left (scheduled + dep_delay); an arrival delay
once it has landed, which happens in the destination's time zone and is converted here. Times
are minutes since the Unix epoch in naive New York local time, as float64 so that an event that
never happened (cancelled, diverted, unknown time zone) is NaN.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.contract import clock_parts

EVENT_COLUMNS = [
    "origin",
    "dest",
    "carrier",
    "flight",
    "tailnum",
    "scheduled",
    "departed_at",
    "dep_delay",
    "arrived_at",
    "arr_delay",
]
NEW_YORK = "America/New_York"


def to_minutes(times: pd.Series | np.ndarray) -> np.ndarray:
    """Naive datetimes -> float64 minutes since the epoch (NaN for NaT)."""
    values = np.asarray(times, dtype="datetime64[ns]")
    minutes = values.astype("datetime64[m]").astype("int64").astype("float64")
    minutes[np.isnat(values)] = np.nan
    return minutes


def minutes_iso(minutes: float) -> str:
    """Minutes since the epoch -> ISO 8601 to the minute (`to_minutes`' inverse, for people)."""
    return str(np.datetime64(int(minutes), "m"))


def zone_of(airports: pd.DataFrame) -> pd.Series:
    """IANA zone per airport code; a fixed offset where only `tz` (hours from UTC) is known."""
    fixed = airports["tz"].map(lambda h: f"Etc/GMT{-int(h):+d}" if pd.notna(h) else None)
    zone = airports["tzone"].where(airports["tzone"].notna(), fixed)
    return pd.Series(zone.to_numpy(), index=airports["faa"].to_numpy())


def _scheduled_arrival_ny(flights: pd.DataFrame, zone: pd.Series) -> np.ndarray:
    """Scheduled arrival as New York local minutes; NaN where the destination's zone is unknown."""
    day = flights["scheduled_departure"].dt.normalize()
    hour, minute = clock_parts(flights["sched_arr_time"].astype("int64"))
    local = day + pd.to_timedelta(hour * 60 + minute, unit="min")
    zones = flights["dest"].map(zone)
    result = np.full(len(flights), np.nan)
    for name, rows in flights.groupby(zones, sort=False).indices.items():
        converted = (
            local.iloc[rows]
            .dt.tz_localize(name, ambiguous="NaT", nonexistent="NaT")
            .dt.tz_convert(NEW_YORK)
            .dt.tz_localize(None)
        )
        result[rows] = to_minutes(converted)
    scheduled = to_minutes(flights["scheduled_departure"])
    overnight = result < scheduled  # the arrival clock time belongs to the next day
    result[overnight] += 24 * 60
    return result


def _flight_number(value: object) -> str:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "<NA>"
    return "<NA>" if number != number else str(int(number))


def identity_of(carrier: object, flight: object, origin: object) -> str:
    """`carrier|flight|origin`: with the scheduled time, what makes a flight itself."""
    return f"{carrier}|{_flight_number(flight)}|{origin}"


def flight_identity(carrier: np.ndarray, flight: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """`identity_of` each flight."""
    return np.array(
        list(
            map(
                identity_of,
                np.asarray(carrier).tolist(),
                np.asarray(flight).tolist(),
                np.asarray(origin).tolist(),
            )
        ),
        dtype=object,
    )


def scheduled_arrivals(flights: pd.DataFrame, airports: pd.DataFrame) -> np.ndarray:
    """Each flight's scheduled arrival on New York's clock (NaN where its zone is unknown)."""
    return _scheduled_arrival_ny(flights, zone_of(airports))


def local_hhmm(minutes: pd.Series, dest: pd.Series, zone: pd.Series) -> pd.Series:
    """New York minutes -> HHMM on the clock of `dest` (NaN where its zone is unknown or the
    New York time is ambiguous); `zone` is `zone_of(airports)`."""
    out = pd.Series(np.nan, index=minutes.index)
    times = pd.to_datetime(minutes, unit="m")
    for name, rows in minutes.groupby(dest.map(zone), sort=False).groups.items():
        local = (
            times[rows]
            .dt.tz_localize(NEW_YORK, ambiguous="NaT", nonexistent="NaT")
            .dt.tz_convert(name)
        )
        out[rows] = (local.dt.hour * 100 + local.dt.minute).astype("float64")
    return out


def sched_arr_hhmm(
    scheduled: pd.Series, scheduled_arrival: pd.Series, dest: pd.Series, airports: pd.DataFrame
) -> pd.Series:
    """The inverse of `scheduled_arrivals`: the HHMM it reads back as this scheduled arrival
    (New York minutes), on the departure's day or, earlier than the departure, the next, so
    a DST night round-trips; NaN where none does."""
    zone = zone_of(airports)
    out = pd.Series(np.nan, index=scheduled.index)
    departure = pd.to_datetime(scheduled, unit="m")
    for days in (0, 1):
        clock = local_hhmm(scheduled_arrival - days * 24 * 60, dest, zone)
        rows = pd.DataFrame(
            {"scheduled_departure": departure, "sched_arr_time": clock.fillna(0), "dest": dest}
        )
        back = _scheduled_arrival_ny(rows, zone)
        found = out.isna() & clock.notna() & (back == scheduled_arrival.to_numpy())
        out[found] = clock[found]
    return out


def flight_events(flights: pd.DataFrame, airports: pd.DataFrame) -> pd.DataFrame:
    """One row per flight: its scheduled departure and when its outcomes became observable."""
    scheduled = to_minutes(flights["scheduled_departure"])
    dep_delay = flights["dep_delay"].to_numpy("float64", na_value=np.nan)
    arr_delay = flights["arr_delay"].to_numpy("float64", na_value=np.nan)
    arrived_at = scheduled_arrivals(flights, airports) + arr_delay
    return pd.DataFrame(
        {
            "origin": flights["origin"].to_numpy(object),
            "dest": flights["dest"].to_numpy(object),
            "carrier": flights["carrier"].to_numpy(object),
            "flight": flights["flight"].to_numpy("float64", na_value=np.nan),
            "tailnum": flights["tailnum"].to_numpy(object),
            "scheduled": scheduled,
            "departed_at": scheduled + dep_delay,
            "dep_delay": dep_delay,
            "arrived_at": arrived_at,
            "arr_delay": np.where(np.isnan(arrived_at), np.nan, arr_delay),
        }
    )
