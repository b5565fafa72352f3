"""`mlops data features`: bronze -> point-in-time features, split by time, spec and lookups.

The graph has two tasks per time partition: one turns its flights into events, one builds its
features from its flights and the events of its neighbours within `LOOKBACK_H`/`LOOKAHEAD_H`.
Memory is bounded by a partition, never by the data, and the result equals the single-process
reference (`build_features_pandas`) exactly. Dimension tables are scattered once to every
worker, never shuffled.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.events import flight_events
from pipelines.layout import DataLayout
from pipelines.lookups import LOOKUP_FILES, WEATHER_COLUMNS, Lookups
from pipelines.partitions import (
    Partition,
    neighbours,
    plan_partitions,
    read_partition,
    sample_sizes,
)
from pipelines.rules import DELAYED_MIN
from pipelines.spec import (
    LABEL,
    MIN_CATEGORY_COUNT,
    FeatureSpec,
    LookupFile,
    PartSummary,
    build_spec,
    sha256_of,
    summarize,
)
from pipelines.splits import SplitPlan
from pipelines.storage import (
    new_generation,
    prune_generations,
    publish_generation,
    read_parquet_folder,
    recover,
    write_npz_table,
    write_parquet_atomic,
)
from pipelines.transform import FEATURES, LOOKAHEAD_H, LOOKBACK_H, RAW_INPUTS, build_features

logger = logging.getLogger(__name__)

TABLE_COLUMNS = list(dict.fromkeys([*RAW_INPUTS, *FEATURES, LABEL]))
Progress = Callable[[int, int], None]
LOOKBACK_MIN, LOOKAHEAD_MIN = LOOKBACK_H * 60, LOOKAHEAD_H * 60


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
    partitions: int


def load_dims(layout: DataLayout) -> Dims:
    return Dims(
        weather=read_parquet_folder(layout.bronze("weather")),
        planes=read_parquet_folder(layout.bronze("planes")),
        airports=read_parquet_folder(layout.bronze("airports")),
    )


def feature_table(flights: pd.DataFrame, lookups: Lookups) -> tuple[pd.DataFrame, int]:
    """The labelled rows of the feature table, and how many rows had no label."""
    raw = flights[RAW_INPUTS].reset_index(drop=True)
    features = build_features(raw, lookups)
    table = raw.join(features.drop(columns=[c for c in features if c in raw]))
    arr_delay = flights["arr_delay"].to_numpy("float64", na_value=np.nan)
    labelled = ~np.isnan(arr_delay)
    table[LABEL] = (arr_delay > DELAYED_MIN).astype("int8")
    return table.loc[labelled, TABLE_COLUMNS].reset_index(drop=True), int((~labelled).sum())


def partition_events(flights: pd.DataFrame, dims: Dims, path: Path) -> pd.DataFrame:
    events = flight_events(flights, dims.airports)
    write_npz_table(events, path)
    return events


def events_between(events: pd.DataFrame, lo: float, hi: float) -> pd.DataFrame:
    """Events of flights scheduled in [lo, hi): what a neighbouring partition can observe."""
    return events[(events["scheduled"] >= lo) & (events["scheduled"] < hi)]


def partition_features(
    partition: Partition,
    split: str,
    sample_rows: int,
    flights: pd.DataFrame,
    events: list[pd.DataFrame],
    dims: Dims,
    out: Path,
) -> PartSummary:
    lookups = Lookups.build(dims.weather, dims.planes, dims.airports, pd.concat(events))
    table, unlabelled = feature_table(flights, lookups)
    write_parquet_atomic(table, out / split / f"{partition.name}.parquet")
    return summarize(table, partition.name, split, unlabelled, sample_rows)


def _write_dims(dims: Dims, lookups_dir: Path) -> None:
    write_npz_table(
        dims.weather[["origin", "time_hour", *WEATHER_COLUMNS]],
        lookups_dir / LOOKUP_FILES["weather"],
    )
    write_npz_table(dims.planes, lookups_dir / LOOKUP_FILES["planes"])
    write_npz_table(dims.airports, lookups_dir / LOOKUP_FILES["airports"])


class _Staging:
    """A build is written into a new generation folder and published whole, spec included,
    by one symlink swap (`pipelines.layout`); until then no reader sees any of it."""

    def __init__(self, layout: DataLayout) -> None:
        recover(layout.root)
        prune_generations(layout.generations, layout.current)  # a crashed build's generation
        self.layout = layout
        self.root = new_generation(layout.generations)
        self.features = self.root / "features"
        self.lookups = self.root / "lookups"
        self.events = self.lookups / LOOKUP_FILES["flight_events"]
        self.published = False

    def events_path(self, partition: Partition) -> Path:
        return self.events / f"{partition.name}.npz"

    def commit(self, spec: FeatureSpec, partitions: int) -> FeatureReport:
        files = sorted(p for p in self.lookups.rglob("*.npz"))
        spec.lookups = {
            str(p.relative_to(self.lookups)): LookupFile(
                path=str(Path("lookups") / p.relative_to(self.lookups)),
                sha256=sha256_of(p),
                bytes=p.stat().st_size,
            )
            for p in files
        }
        published = DataLayout(self.layout.home, self.root.name)
        spec.save(published.spec)
        publish_generation(self.root, self.layout.current)
        self.published = True
        prune_generations(self.layout.generations, self.layout.current)
        _remove_unversioned_build(self.layout)
        return FeatureReport(
            spec, published.spec, published.features, published.lookups, partitions
        )

    def abort(self) -> None:
        if not self.published:
            shutil.rmtree(self.root, ignore_errors=True)


def _remove_unversioned_build(layout: DataLayout) -> None:
    """The build a home made before generations kept at data/{features,lookups,spec}:
    superseded by the first generation, and read by nothing."""
    for name in ("features", "lookups"):
        shutil.rmtree(layout.root / name, ignore_errors=True)
    (layout.root / "feature_spec.json").unlink(missing_ok=True)


def _plan(
    layout: DataLayout, plan: SplitPlan, target_rows: int | None
) -> tuple[list[Partition], dict[str, int]]:
    """The time partitions, and how many rows each adds to the quantile sample."""
    partitions = plan_partitions(layout, *([target_rows] if target_rows else []))
    train = {p.name for p in partitions if plan.split_of(p.month) == "train"}
    return partitions, sample_sizes(partitions, train)


def _stage_dims(layout: DataLayout, staging: _Staging) -> Dims:
    dims = load_dims(layout)
    _write_dims(dims, staging.lookups)
    return dims


def build_feature_tables(
    layout: DataLayout,
    plan: SplitPlan,
    client,  # distributed.Client
    min_category_count: int = MIN_CATEGORY_COUNT,
    on_progress: Progress | None = None,
    target_rows: int | None = None,
) -> FeatureReport:
    """The Dask graph: an events task and a features task per time partition."""
    from dask import delayed
    from distributed import as_completed

    partitions, samples = _plan(layout, plan, target_rows)
    staging = _Staging(layout)
    try:
        dims = _stage_dims(layout, staging)
        dims_future = client.scatter(dims, broadcast=True)
        flights = [
            delayed(read_partition)(layout, p, dask_key_name=f"flights-{p.name}")
            for p in partitions
        ]
        events = [
            delayed(partition_events)(
                flights[i], dims_future, staging.events_path(p), dask_key_name=f"events-{p.name}"
            )
            for i, p in enumerate(partitions)
        ]
        tasks = []
        for i, p in enumerate(partitions):
            near = [
                events[j]
                if j == i
                else delayed(events_between)(
                    events[j], p.start_min - LOOKBACK_MIN, p.end_min + LOOKAHEAD_MIN
                )
                for j in neighbours(partitions, i)
            ]
            tasks.append(
                delayed(partition_features)(
                    p,
                    plan.split_of(p.month),
                    samples[p.name],
                    flights[i],
                    near,
                    dims_future,
                    staging.features,
                    dask_key_name=f"features-{p.name}",
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
        return staging.commit(spec, len(partitions))
    finally:
        staging.abort()


def build_features_pandas(
    layout: DataLayout,
    plan: SplitPlan,
    min_category_count: int = MIN_CATEGORY_COUNT,
    target_rows: int | None = None,
) -> FeatureReport:
    """The same features in one pandas process over the whole data: the reference and baseline."""
    partitions, samples = _plan(layout, plan, target_rows)
    staging = _Staging(layout)
    try:
        dims = _stage_dims(layout, staging)
        flights = read_parquet_folder(layout.bronze("flights"))
        events = flight_events(flights, dims.airports)
        lookups = Lookups.build(dims.weather, dims.planes, dims.airports, events)
        table, _ = feature_table(flights, lookups)
        when = flights["scheduled_departure"]
        labelled_when = when[flights["arr_delay"].notna().to_numpy()].to_numpy()
        unlabelled_when = when[flights["arr_delay"].isna().to_numpy()]
        summaries = []
        for p in partitions:
            inside = ((when >= p.start) & (when < p.end)).to_numpy()
            write_npz_table(events[inside], staging.events_path(p))
            rows = table[(labelled_when >= p.start) & (labelled_when < p.end)].reset_index(
                drop=True
            )
            split = plan.split_of(p.month)
            write_parquet_atomic(rows, staging.features / split / f"{p.name}.parquet")
            unlabelled = int(((unlabelled_when >= p.start) & (unlabelled_when < p.end)).sum())
            summaries.append(summarize(rows, p.name, split, unlabelled, samples[p.name]))
        return staging.commit(build_spec(summaries, min_category_count), len(partitions))
    finally:
        staging.abort()
