"""In-memory lookup structures shared by the offline feature graph and the online server.

Every structure is a sorted numpy array queried with binary search, so a lookup costs the same
per flight whether it is one request or a month of flights. Window aggregates are two binary
searches into cumulative sums over events sorted by (key, observed time): the window
[t - a, t - b) counts exactly the events observed before t - b, which is what keeps them free of
leakage.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.tseries.holiday import USFederalHolidayCalendar

from pipelines.events import flight_identity, to_minutes
from pipelines.storage import read_npz_folder, read_npz_table

KEY_SHIFT = 32  # composite stamp = key code << 32 | minutes since the epoch (fits to year 10136)
WEATHER_COLUMNS = [
    "temp",
    "dewp",
    "humid",
    "wind_dir",
    "wind_speed",
    "wind_gust",
    "precip",
    "pressure",
    "visib",
]
PLANE_NUMERIC = ["year", "seats", "engines"]
PLANE_TEXT = ["manufacturer", "model", "engine", "type"]
AIRPORT_NUMERIC = ["lat", "lon", "alt", "tz"]


SMALL_BATCH = 512  # below this many values a dict beats building a pandas Index


class Codebook:
    """Maps string keys to dense codes; -1 for a key it has never seen (or a missing key).

    Large arrays (offline) go through pandas' hash index; the small batches of the request
    path through a plain dict of the same keys, which gives the same codes without pandas'
    per-call overhead. A codebook may grow (`add`): the online store keeps one per key for its
    life, so each flight's keys are coded once, when it arrives. A code added after a
    structure was built matches none of its rows, which is what an unknown key does.
    """

    def __init__(self, keys: np.ndarray | list[str] = ()) -> None:
        unique = pd.unique(pd.Series(keys, dtype=object).dropna())
        self.codes: dict[str, int] = dict(zip(unique, range(len(unique)), strict=True))
        self._index = pd.Index(unique, dtype=object)

    @property
    def index(self) -> pd.Index:
        index = self._index
        if len(index) != len(self.codes):  # grown since (dict order is code order)
            index = self._index = pd.Index(list(self.codes), dtype=object)
        return index

    def add(self, key: object) -> int:
        """`key`'s code, a new one if it has none; -1 for a missing key."""
        if not isinstance(key, str):
            return -1
        code = self.codes.get(key)
        if code is None:
            code = self.codes[key] = len(self.codes)
        return code

    def encode(self, values: np.ndarray) -> np.ndarray:
        if len(values) < SMALL_BATCH:
            keys = values.tolist() if isinstance(values, np.ndarray) else list(values)
            return np.array(list(map(self.codes.get, keys, repeat(-1))), dtype="int64")
        return self.index.get_indexer(pd.Index(values, dtype=object)).astype("int64")

    def __len__(self) -> int:
        return len(self.codes)


def _stamps(codes: np.ndarray, minutes: np.ndarray) -> np.ndarray:
    return (codes.astype("int64") << KEY_SHIFT) + minutes.astype("int64")


def _order(stamps: np.ndarray, ties: np.ndarray) -> np.ndarray:
    """The order that sorts `stamps`, equal stamps by the columns of `ties` (float64 [rows,
    columns], first column first, NaN last). Stamps are nearly always distinct: the lexsort
    of every column, the cost of most of a small rebuild, only runs when two are equal."""
    order = np.argsort(stamps, kind="stable")
    ordered = stamps[order]
    if not (ordered[1:] == ordered[:-1]).any():
        return order
    tied = np.where(np.isnan(ties), np.inf, ties)
    return np.lexsort((*tied.T[::-1], stamps))


def _with_missing_row(values: np.ndarray) -> np.ndarray:
    """`values` and one more row of missing values (NaN, or None for objects) at the end."""
    missing = None if values.dtype == object else np.nan
    extra = np.full((1, *values.shape[1:]), missing, dtype=values.dtype)
    return np.concatenate([values, extra])


@dataclass(frozen=True)
class WindowIndex:
    """Values of events by key, sorted by the time each became observable."""

    codes: Codebook
    stamps: np.ndarray  # int64, sorted
    cumsum: np.ndarray  # float64, len(stamps) + 1

    @classmethod
    def build(
        cls, codes: Codebook, keys: np.ndarray, times: np.ndarray, values: np.ndarray
    ) -> WindowIndex:
        """`keys`: each event's code in `codes` (-1: no key, left out)."""
        keep = (keys >= 0) & ~np.isnan(times) & ~np.isnan(values)
        stamps = _stamps(keys[keep], times[keep])
        order = np.argsort(stamps, kind="stable")
        total = np.concatenate([[0.0], np.cumsum(values[keep][order], dtype="float64")])
        return cls(codes, stamps[order], total)

    def window(
        self, keys: np.ndarray, start: np.ndarray, end: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Count and sum of the values observed in [start, end) per key."""
        count, total = self.windows(keys, start[:, None], end[:, None])
        return count[:, 0], total[:, 0]

    def windows(
        self, keys: np.ndarray, start: np.ndarray, end: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """`window` for several windows per key at once: `start` and `end` are [rows, windows]
        and so are the counts and sums; one binary search for all of their edges."""
        code = self.codes.encode(keys)[:, None]
        known = code >= 0
        edges = np.concatenate([start, end], axis=1)
        found = np.searchsorted(self.stamps, _stamps(code, edges), side="left")
        lo, hi = found[:, : start.shape[1]], found[:, start.shape[1] :]
        count = np.where(known, hi - lo, 0)
        total = np.where(known, self.cumsum[hi] - self.cumsum[lo], 0.0)
        return count.astype("float64"), total


@dataclass(frozen=True)
class PreviousIndex:
    """Scheduled departures by key (an aircraft), to find the one scheduled just before a time."""

    codes: Codebook
    stamps: np.ndarray
    values: np.ndarray  # float64 [rows + 1, 3]: scheduled, departed_at, dep_delay; NaN last

    @classmethod
    def build(
        cls,
        codes: Codebook,
        keys: np.ndarray,
        scheduled: np.ndarray,
        departed_at: np.ndarray,
        delay: np.ndarray,
    ) -> PreviousIndex:
        """`keys`: each event's code in `codes` (-1: no key, left out)."""
        keep = (keys >= 0) & ~np.isnan(scheduled)
        stamps = _stamps(keys[keep], scheduled[keep])
        # Ties broken by the outcome so that any subset holding the same events sorts the same.
        values = np.column_stack([scheduled[keep], departed_at[keep], delay[keep]])
        order = _order(stamps, values[:, 1:])
        return cls(codes, stamps[order], _with_missing_row(values[order]))

    def previous(
        self, keys: np.ndarray, before: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scheduled time, departure time and delay of the last event with the same key
        scheduled strictly before `before`; NaN where there is none."""
        if not len(self.stamps):
            out = np.full((len(keys), 3), np.nan)
            return out[:, 0], out[:, 1], out[:, 2]
        code = self.codes.encode(keys)
        pos = np.searchsorted(self.stamps, _stamps(code, before), side="left") - 1
        safe = np.maximum(pos, 0)
        found = (code >= 0) & (pos >= 0) & ((self.stamps[safe] >> KEY_SHIFT) == code)
        out = self.values[np.where(found, safe, -1)]  # -1: the row of NaNs
        return out[:, 0], out[:, 1], out[:, 2]


@dataclass(frozen=True)
class KeyedRows:
    """Rows of a dimension table addressed by one key column (a plane, an airport).

    The columns are turned into arrays once, when the lookups are built: float64 for numbers,
    objects (None for missing) for text, each with a last row of missing values that unknown
    keys (code -1) land on, so a request only gathers rows.
    """

    codes: Codebook
    columns: dict[str, np.ndarray]

    @classmethod
    def build(cls, frame: pd.DataFrame, key: str) -> KeyedRows:
        frame = frame.drop_duplicates(key).reset_index(drop=True)
        columns = {}
        for name, series in frame.items():
            if pd.api.types.is_numeric_dtype(series):
                columns[name] = series.to_numpy("float64", na_value=np.nan)
            else:
                values = series.astype(object).to_numpy()
                columns[name] = np.where(pd.notna(values), values, None).astype(object)
        columns = {name: _with_missing_row(values) for name, values in columns.items()}
        return cls(Codebook(frame[key].to_numpy(object)), columns)

    def take(self, keys: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        """Each named column's value per key: NaN (numbers) or None (text) for unknown keys."""
        row = self.codes.encode(keys)  # -1, the missing row, for unknown keys
        return {name: self.columns[name][row] for name in names}


@dataclass(frozen=True)
class KeyedTimeTable:
    """Rows found by exact (key, time): hourly weather at an airport, a flight's own events."""

    codes: Codebook
    stamps: np.ndarray
    values: np.ndarray  # float64 [rows + 1, columns]; the last row is NaN
    columns: list[str]

    @classmethod
    def build(
        cls,
        codes: Codebook,
        keys: np.ndarray,
        times: np.ndarray,
        values: np.ndarray,
        columns: list[str],
    ) -> KeyedTimeTable:
        """`keys`: each row's code in `codes`; `values`: float64 [rows, columns], one row per
        (key, time)."""
        stamps = _stamps(keys, np.nan_to_num(times))
        # Ties broken by the values so that any subset holding the same rows sorts the same.
        order = _order(stamps, values)
        return cls(codes, stamps[order], _with_missing_row(values[order]), list(columns))

    def at(self, keys: np.ndarray, times: np.ndarray) -> np.ndarray:
        """The row of each (key, time), NaN where there is none."""
        if not len(self.stamps):
            return np.full((len(keys), len(self.columns)), np.nan)
        code = self.codes.encode(keys)
        query = _stamps(code, times)
        pos = np.searchsorted(self.stamps, query)
        safe = np.minimum(pos, len(self.stamps) - 1)
        hit = (code >= 0) & (self.stamps[safe] == query)
        return self.values[np.where(hit, safe, -1)]  # -1: the row of NaNs


@functools.cache
def holiday_days(start: str = "1990-01-01", end: str = "2060-12-31") -> np.ndarray:
    """US federal holidays as days since the epoch, sorted (computed once per process)."""
    days = USFederalHolidayCalendar().holidays(start, end).to_numpy("datetime64[D]")
    return days.astype("int64")


@dataclass(frozen=True)
class Lookups:
    """Everything the transform needs besides the flight itself."""

    weather: KeyedTimeTable
    planes: KeyedRows
    airports: KeyedRows
    origin_departures: WindowIndex
    carrier_departures: WindowIndex
    dest_arrivals: WindowIndex
    origin_schedule: WindowIndex
    tail_schedule: PreviousIndex
    own_events: KeyedTimeTable  # a flight's own events, by identity and scheduled time
    holidays: np.ndarray

    @classmethod
    def build(
        cls,
        weather: pd.DataFrame,
        planes: pd.DataFrame,
        airports: pd.DataFrame,
        events: pd.DataFrame,
    ) -> Lookups:
        """From a feature build's tables: hourly weather, the dimensions and the rows of
        `flight_events`."""
        hourly = weather_arrays(weather)
        keys = {name: events[name].to_numpy(object) for name in EVENT_KEYS[:-1]}
        keys["identity"] = flight_identity(
            keys["carrier"], events["flight"].to_numpy(), keys["origin"]
        )
        books = {name: Codebook(values) for name, values in keys.items()}
        books["origin"] = Codebook(np.concatenate([keys["origin"], hourly["origin"]]))
        coded = {name: books[name].encode(values) for name, values in keys.items()}
        values = {name: events[name].to_numpy("float64", na_value=np.nan) for name in EVENT_VALUES}
        hourly["origin"] = books["origin"].encode(hourly["origin"])
        return cls(
            weather=weather_table(books, hourly),
            planes=KeyedRows.build(planes, "tailnum"),
            airports=KeyedRows.build(airports, "faa"),
            holidays=holiday_days(),
            **event_indexes(books, coded | values),
        )


Arrays = dict[str, np.ndarray]
Books = dict[str, Codebook]  # EVENT_KEYS -> its codebook; weather's airports are `origin`'s
EVENT_KEYS = ["origin", "dest", "carrier", "tailnum", "identity"]  # coded (`Books`)
EVENT_VALUES = ["scheduled", "departed_at", "dep_delay", "arrived_at", "arr_delay"]
OWN_EVENT_COLUMNS = ["departed_at", "dep_delay", "arrived_at", "arr_delay"]


def event_indexes(books: Books, events: Arrays) -> dict[str, Any]:
    """The structures of `Lookups` made of flight events (its window and event indexes), from
    each event's
    `EVENT_KEYS` as codes in `books` (an identity is `flight_identity`) and its `EVENT_VALUES`
    (float64, NaN where unknown). The online store rebuilds these as events arrive, from
    codes it computed once per flight, without a DataFrame or a string."""
    ones = np.ones(len(events["scheduled"]))
    own = np.column_stack([events[name] for name in OWN_EVENT_COLUMNS])
    return {
        "origin_departures": WindowIndex.build(
            books["origin"], events["origin"], events["departed_at"], events["dep_delay"]
        ),
        "carrier_departures": WindowIndex.build(
            books["carrier"], events["carrier"], events["departed_at"], events["dep_delay"]
        ),
        "dest_arrivals": WindowIndex.build(
            books["dest"], events["dest"], events["arrived_at"], events["arr_delay"]
        ),
        "origin_schedule": WindowIndex.build(
            books["origin"], events["origin"], events["scheduled"], ones
        ),
        "tail_schedule": PreviousIndex.build(
            books["tailnum"],
            events["tailnum"],
            events["scheduled"],
            events["departed_at"],
            events["dep_delay"],
        ),
        "own_events": KeyedTimeTable.build(
            books["identity"],
            events["identity"],
            events["scheduled"],
            own.reshape(len(ones), len(OWN_EVENT_COLUMNS)),
            OWN_EVENT_COLUMNS,
        ),
    }


def weather_table(books: Books, weather: Arrays) -> KeyedTimeTable:
    """Hourly weather (`weather_arrays`, its `origin` coded in `books["origin"]`)."""
    return KeyedTimeTable.build(
        books["origin"], weather["origin"], weather["time_hour"], weather["values"], WEATHER_COLUMNS
    )


def weather_arrays(weather: pd.DataFrame) -> Arrays:
    """Hourly weather as arrays: `origin`, `time_hour` (minutes) and `values`, float64
    [rows, WEATHER_COLUMNS]."""
    return {
        "origin": weather["origin"].to_numpy(object),
        "time_hour": to_minutes(weather["time_hour"]),
        "values": weather[WEATHER_COLUMNS].to_numpy("float64", na_value=np.nan),
    }


LOOKUP_FILES = {
    "weather": "weather.npz",
    "planes": "planes.npz",
    "airports": "airports.npz",
    "flight_events": "flight_events",  # a folder: one .npz per time partition
}


def load_lookups(folder: Path) -> Lookups:
    """Build the lookups from the files `mlops data features` wrote (what serving loads)."""
    if not (folder / LOOKUP_FILES["weather"]).exists():
        raise FileNotFoundError(
            f"{folder}: no .npz lookup tables (a model logged before they replaced Parquet "
            "has to be retrained, or its features rebuilt with `mlops data features`)"
        )
    events = read_npz_folder(folder / LOOKUP_FILES["flight_events"])
    return Lookups.build(
        read_npz_table(folder / LOOKUP_FILES["weather"]),
        read_npz_table(folder / LOOKUP_FILES["planes"]),
        read_npz_table(folder / LOOKUP_FILES["airports"]),
        events,
    )
