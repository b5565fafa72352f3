"""The data steps: validated ingest into bronze, the feature table on Dask, synthetic data."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from mlops.configs import cluster_of, layout_of, plan_of
from mlops.flows.progress import Progress
from mlops.locks import writer_lock
from mlops.settings import Settings
from pipelines.errors import NoDataError
from pipelines.features import FeatureReport
from pipelines.ingest import IngestReport, MonthWindow, TableReport
from pipelines.layout import DataLayout
from pipelines.splits import SplitPlan


def ingest(
    settings: Settings, progress: Progress, sources: Mapping[str, Path], window: MonthWindow
) -> IngestReport:
    """The sources (the bundled tables unless given) into bronze, by month; bad rows quarantined."""
    from pipelines.ingest import TABLE_ORDER
    from pipelines.ingest import ingest as ingest_tables

    with (
        writer_lock(settings, "mlops data ingest", on_wait=progress.note),
        progress.stage("ingest", total=len(TABLE_ORDER)) as update,
    ):

        def advance(report: TableReport) -> None:
            update(advance=1, description=f"ingest: {report.table}")

        def reading(table: str, rows: int) -> None:
            update(description=f"ingest: {table} ({rows:,} rows read)")

        return ingest_tables(
            layout_of(settings), sources, window, on_table=advance, on_rows=reading
        )


def build_features(
    settings: Settings, progress: Progress, plan: SplitPlan | None = None
) -> FeatureReport:
    """The point-in-time feature table, its spec and the online lookups, on Dask."""
    from pipelines.cluster import dask_client
    from pipelines.features import build_feature_tables

    with (
        writer_lock(settings, "mlops data features", on_wait=progress.note),
        dask_client(cluster_of(settings)) as client,
        progress.stage("features (Dask, one task per partition)") as update,
    ):

        def advance(done: int, total: int) -> None:
            update(completed=done, total=total)

        return build_feature_tables(
            layout_of(settings),
            plan or plan_of(settings),
            client,
            settings.features.min_category_count,
            on_progress=advance,
        )


def require_features(layout: DataLayout) -> None:
    if not layout.spec.exists():
        raise NoDataError(f"no feature table at {layout.root}: run `mlops data features` first")


def synthesize(settings: Settings, rows: int, out: Path | None, seed: int) -> tuple[Path, int]:
    """Flights-like data resampled from the real flights: (folder, parts)."""
    import pandas as pd

    from pipelines.sources import bundled_source
    from pipelines.synth import synthesize as synthesize_flights

    target = out or settings.home / "synth" / f"flights-{rows}"
    parts = synthesize_flights(pd.read_csv(bundled_source("flights")), rows, target, seed=seed)
    return target, len(parts)
