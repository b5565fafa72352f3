"""End-to-end flows the CLI commands share: each stage with a progress display."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mlops.settings import Settings
from pipelines.cluster import ClusterConfig
from pipelines.errors import PipelineError
from pipelines.features import FeatureReport
from pipelines.ingest import IngestReport, MonthWindow, TableReport
from pipelines.layout import DataLayout
from pipelines.splits import SplitPlan

if TYPE_CHECKING:
    from training.tracking import TrackingConfig


def layout_of(settings: Settings) -> DataLayout:
    return DataLayout(settings.home)


def cluster_of(settings: Settings) -> ClusterConfig:
    return ClusterConfig(scheduler=settings.dask_scheduler, **settings.dask.model_dump())


def tracking_of(settings: Settings) -> TrackingConfig:
    from training.tracking import TrackingConfig

    return TrackingConfig(settings.home, settings.tracking_uri, settings.experiment)


def require_features(layout: DataLayout) -> None:
    if not layout.spec.exists():
        raise PipelineError(f"no feature spec at {layout.spec}: run `mlops data features` first")


def plan_of(settings: Settings) -> SplitPlan:
    return SplitPlan(settings.features.valid_start, settings.features.test_start)


def progress_bar(console: Console, disable: bool = False) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=disable,
    )


def run_ingest(
    settings: Settings, console: Console, sources: Mapping[str, Path], window: MonthWindow
) -> IngestReport:
    from pipelines.ingest import TABLE_ORDER, ingest

    with progress_bar(console) as progress:
        bar = progress.add_task("ingest", total=len(TABLE_ORDER))

        def advance(report: TableReport) -> None:
            progress.update(bar, advance=1, description=f"ingest: {report.table}")

        def reading(table: str, rows: int) -> None:
            progress.update(bar, description=f"ingest: {table} ({rows:,} rows read)")

        report = ingest(layout_of(settings), sources, window, on_table=advance, on_rows=reading)
    table = Table(title="ingest: rows in = kept + quarantined")
    for column in ("table", "rows in", "kept", "quarantined", "out of window", "months"):
        table.add_column(column, justify="right" if column != "table" else "left")
    for t in report.tables.values():
        months = f"{t.months[0]}..{t.months[-1]}" if len(t.months) > 1 else ",".join(t.months)
        table.add_row(
            t.table,
            f"{t.rows_in:,}",
            f"{t.kept:,}",
            f"{t.quarantined:,}",
            f"{t.out_of_window:,}",
            months,
        )
    console.print(table)
    for t in report.tables.values():
        for reason, count in sorted(t.reasons.items(), key=lambda kv: -kv[1])[:5]:
            console.print(f"  quarantined {t.table}: {count:,} x {reason}")
    layout = layout_of(settings)
    console.print(f"bronze: {layout.root / 'bronze'}   quarantine: {layout.root / 'quarantine'}")
    return report


def run_features(
    settings: Settings, console: Console, plan: SplitPlan | None = None
) -> FeatureReport:
    from pipelines.cluster import dask_client
    from pipelines.features import build_feature_tables

    with dask_client(cluster_of(settings)) as client, progress_bar(console) as progress:
        bar = progress.add_task("features (Dask, one task per month)", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(bar, completed=done, total=total)

        report = build_feature_tables(
            layout_of(settings),
            plan or plan_of(settings),
            client,
            settings.features.min_category_count,
            on_progress=advance,
        )
    table = Table(title="feature table (labelled rows)")
    for column in ("split", "months", "rows", "delayed rate", "unlabelled"):
        table.add_column(column)
    for name, split in report.spec.splits.items():
        months = f"{split.months[0]}..{split.months[-1]}" if split.months else "-"
        table.add_row(
            name, months, f"{split.rows:,}", f"{split.positive_rate:.3f}", f"{split.unlabelled:,}"
        )
    console.print(table)
    console.print(
        f"features: {report.features}\nspec: {report.spec_path}\nlookups: {report.lookups}"
    )
    return report
