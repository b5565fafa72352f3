"""`mlops data features`: bronze -> point-in-time features, split by time, spec and lookups.

The graph is one task per month: it reads the month's flights and the events of its
neighbours within `LOOKBACK_H`/`LOOKAHEAD_H`, so memory is bounded by a partition, never by the
data, and the result equals the single-process reference (`build_features_pandas`) exactly.
Dimension tables are scattered once to every worker, never shuffled.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.errors import NoDataError
from pipelines.events import flight_events
from pipelines.layout import DataLayout
from pipelines.lookups import LOOKUP_FILES, WEATHER_COLUMNS, Lookups
from pipelines.spec import (
    LABEL,
    FeatureSpec,
    LookupFile,
    PartSummary,
    build_spec,
    sha256_of,
    summarize,
)
from pipelines.splits import SplitPlan
from pipelines.storage import read_parquet_folder, recover, swap_in, write_parquet_atomic
from pipelines.transform import FEATURES, LOOKAHEAD_H, LOOKBACK_H, RAW_INPUTS, build_features

logger = logging.getLogger(__name__)

TABLE_COLUMNS = list(dict.fromkeys([*RAW_INPUTS, *FEATURES, LABEL]))
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Dims:
    """The dimension tables every partition joins against (small: broadcast to all workers)."""

    weather: pd.DataFrame
    planes: pd.DataFrame
    airports: pd.DataFrame


@dataclass(frozen=True)
class FeatureReport:
    spec: FeatureSpec
    spec_path: Path
    features: Path
    lookups: Path


def load_dims(layout: DataLayout) -> Dims:
    return Dims(
        weather=read_parquet_folder(layout.bronze("weather")),
        planes=read_parquet_folder(layout.bronze("planes")),
        airports=read_parquet_folder(layout.bronze("airports")),
    )


def _month_start(month: str) -> float:
    return float(pd.Timestamp(f"{month}-01").value // 60_000_000_000)


def _next_month(month: str) -> str:
    return (pd.Period(month, "M") + 1).strftime("%Y-%m")


def read_month(layout: DataLayout, month: str) -> pd.DataFrame:
    return read_parquet_folder(layout.month_partition("flights", month))


def month_events(flights: pd.DataFrame, dims: Dims, path: Path) -> pd.DataFrame:
    events = flight_events(flights, dims.airports)
    write_parquet_atomic(events, path)
    return events


def events_near(events: pd.DataFrame, lo: float, hi: float) -> pd.DataFrame:
    """Events of flights scheduled in [lo, hi): what a neighbouring partition can observe."""
    return events[(events["scheduled"] >= lo) & (events["scheduled"] < hi)]


def feature_table(flights: pd.DataFrame, lookups: Lookups) -> tuple[pd.DataFrame, int]:
    """The labelled rows of the feature table, and how many rows had no label."""
    features = build_features(flights[[c for c in RAW_INPUTS if c in flights]], lookups)
    arr_delay = flights["arr_delay"].to_numpy("float64", na_value=np.nan)
    labelled = ~np.isnan(arr_delay)
    table = pd.concat(
        [flights[RAW_INPUTS].reset_index(drop=True), features.reset_index(drop=True)], axis=1
    )
    table = table.loc[:, ~table.columns.duplicated()]
    table[LABEL] = (arr_delay > 15).astype("int8")
    return table.loc[labelled, TABLE_COLUMNS].reset_index(drop=True), int((~labelled).sum())


def month_features(
    month: str,
    split: str,
    flights: pd.DataFrame,
    events: list[pd.DataFrame],
    dims: Dims,
    out: Path,
) -> PartSummary:
    lookups = Lookups.build(dims.weather, dims.planes, dims.airports, pd.concat(events))
    table, unlabelled = feature_table(flights, lookups)
    write_parquet_atomic(table, out / split / f"{month}.parquet")
    return summarize(table, month, split, unlabelled)


def _write_dims(dims: Dims, lookups_dir: Path) -> None:
    write_parquet_atomic(
        dims.weather[["origin", "time_hour", *WEATHER_COLUMNS]],
        lookups_dir / LOOKUP_FILES["weather"],
    )
    write_parquet_atomic(dims.planes, lookups_dir / LOOKUP_FILES["planes"])
    write_parquet_atomic(dims.airports, lookups_dir / LOOKUP_FILES["airports"])


class _Staging:
    """Features and lookups are built aside and swapped in together with the spec."""

    def __init__(self, layout: DataLayout) -> None:
        recover(layout.root)
        self.layout = layout
        self.root = layout.root / f".staging-build-{uuid.uuid4().hex[:12]}"
        self.features = self.root / "features"
        self.lookups = self.root / "lookups"
        self.events = self.lookups / LOOKUP_FILES["flight_events"]

    def commit(self, spec: FeatureSpec) -> FeatureReport:
        files = sorted(p for p in self.lookups.rglob("*.parquet"))
        spec.lookups = {
            str(p.relative_to(self.lookups)): LookupFile(
                path=str(Path("lookups") / p.relative_to(self.lookups)),
                sha256=sha256_of(p),
                bytes=p.stat().st_size,
            )
            for p in files
        }
        swap_in(self.features, self.layout.features)
        swap_in(self.lookups, self.layout.lookups)
        spec.save(self.layout.spec)
        shutil.rmtree(self.root, ignore_errors=True)
        return FeatureReport(spec, self.layout.spec, self.layout.features, self.layout.lookups)

    def abort(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _months(layout: DataLayout) -> list[str]:
    months = layout.months("flights")
    if not months:
        raise NoDataError(f"no bronze flights under {layout.bronze('flights')}: run ingest first")
    return months


def build_feature_tables(
    layout: DataLayout,
    plan: SplitPlan,
    client,  # distributed.Client
    min_category_count: int = 10,
    on_progress: Progress | None = None,
) -> FeatureReport:
    """The Dask graph: one events task and one features task per month."""
    from dask import delayed
    from distributed import as_completed

    months = _months(layout)
    staging = _Staging(layout)
    try:
        dims = load_dims(layout)
        _write_dims(dims, staging.lookups)
        dims_future = client.scatter(dims, broadcast=True)
        events = {
            m: delayed(month_events)(
                delayed(read_month)(layout, m),
                dims_future,
                staging.events / f"month={m}.parquet",
                dask_key_name=f"events-{m}",
            )
            for m in months
        }
        tasks = []
        for i, m in enumerate(months):
            start, end = _month_start(m), _month_start(_next_month(m))
            parts = [events[m]]
            if i > 0:
                parts.append(
                    delayed(events_near)(events[months[i - 1]], start - LOOKBACK_H * 60, start)
                )
            if i + 1 < len(months):
                parts.append(
                    delayed(events_near)(events[months[i + 1]], end, end + LOOKAHEAD_H * 60)
                )
            tasks.append(
                delayed(month_features)(
                    m,
                    plan.split_of(m),
                    delayed(read_month)(layout, m),
                    parts,
                    dims_future,
                    staging.features,
                    dask_key_name=f"features-{m}",
                )
            )
        summaries: list[PartSummary] = []
        futures = client.compute(tasks)
        for done, future in enumerate(as_completed(futures), start=1):
            summaries.append(future.result())
            future.release()
            if on_progress:
                on_progress(done, len(tasks))
        spec = build_spec(summaries, min_category_count)
        return staging.commit(spec)
    finally:
        staging.abort()


def build_features_pandas(
    layout: DataLayout, plan: SplitPlan, min_category_count: int = 10
) -> FeatureReport:
    """The same features in one pandas process over the whole data: the reference and baseline."""
    months = _months(layout)
    staging = _Staging(layout)
    try:
        dims = load_dims(layout)
        _write_dims(dims, staging.lookups)
        flights = read_parquet_folder(layout.bronze("flights"))
        events = flight_events(flights, dims.airports)
        month_of = flights["scheduled_departure"].dt.strftime("%Y-%m")
        for m in months:
            write_parquet_atomic(
                events[(month_of == m).to_numpy()], staging.events / f"month={m}.parquet"
            )
        lookups = Lookups.build(dims.weather, dims.planes, dims.airports, events)
        table, _ = feature_table(flights, lookups)
        labelled_month = month_of[flights["arr_delay"].notna().to_numpy()].to_numpy()
        unlabelled = flights.loc[flights["arr_delay"].isna(), "scheduled_departure"].dt.strftime(
            "%Y-%m"
        )
        summaries = []
        for m in months:
            rows = table[labelled_month == m].reset_index(drop=True)
            split = plan.split_of(m)
            write_parquet_atomic(rows, staging.features / split / f"{m}.parquet")
            summaries.append(summarize(rows, m, split, int((unlabelled == m).sum())))
        return staging.commit(build_spec(summaries, min_category_count))
    finally:
        staging.abort()
