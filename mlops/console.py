"""The terminal: one console, progress bars behind the flows' `Progress`, result tables."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mlops.flows.progress import Update

if TYPE_CHECKING:
    from pipelines.features import FeatureReport
    from pipelines.ingest import IngestReport
    from training.registry import Decision

console = Console(stderr=True)


class Bars:
    """`mlops.flows.progress.Progress` as rich progress bars, one per stage."""

    def __init__(self, target: Console = console, disable: bool = False) -> None:
        self.console = target
        self.disable = disable

    @contextmanager
    def stage(self, description: str, total: float | None = None) -> Iterator[Update]:
        bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            disable=self.disable,
        )
        with bars:
            yield partial(bars.update, bars.add_task(description, total=total))

    def note(self, message: str) -> None:
        if not self.disable:
            self.console.print(message)


def _months(months: list[str] | tuple[str, ...]) -> str:
    return f"{months[0]}..{months[-1]}" if len(months) > 1 else ",".join(months) or "-"


def show_ingest(report: IngestReport, bronze: str, quarantine: str) -> None:
    table = Table(title="ingest: rows in = kept + quarantined")
    for column in ("table", "rows in", "kept", "quarantined", "out of window", "months"):
        table.add_column(column, justify="right" if column != "table" else "left")
    for t in report.tables.values():
        table.add_row(
            t.table,
            f"{t.rows_in:,}",
            f"{t.kept:,}",
            f"{t.quarantined:,}",
            f"{t.out_of_window:,}",
            _months(t.months),
        )
    console.print(table)
    for t in report.tables.values():
        for reason, count in sorted(t.reasons.items(), key=lambda kv: -kv[1])[:5]:
            console.print(f"  quarantined {t.table}: {count:,} x {reason}")
    console.print(f"bronze: {bronze}   quarantine: {quarantine}")


def show_features(report: FeatureReport) -> None:
    table = Table(title="feature table (labelled rows)")
    for column in ("split", "months", "rows", "delayed rate", "unlabelled"):
        table.add_column(column)
    for name, split in report.spec.splits.items():
        table.add_row(
            name,
            _months(split.months),
            f"{split.rows:,}",
            f"{split.positive_rate:.3f}",
            f"{split.unlabelled:,}",
        )
    console.print(table)
    console.print(
        f"features: {report.features}\nspec: {report.spec_path}\nlookups: {report.lookups}"
    )


def show_metrics(metrics: dict[str, float]) -> None:
    for name, value in metrics.items():
        console.print(
            f"  {name}: {value:.4f}" if isinstance(value, float) else f"  {name}: {value}"
        )


def decision_line(decision: Decision) -> str:
    verdict = (
        "[bold green]promoted[/]" if decision.promoted else "[bold yellow]kept the champion[/]"
    )
    return f"{verdict}: version {decision.version}: {decision.reason}"
