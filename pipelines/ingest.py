"""Ingest: raw sources -> validated bronze Parquet by month, rejected rows -> quarantine.

Every table is read and validated before anything is committed, so a bad file stops the run
with nothing half-written; then each month folder is swapped into place. Rows in scope always
equal rows kept plus rows quarantined.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipelines.contract import local_time
from pipelines.layout import DataLayout
from pipelines.schemas import SCHEMAS, TableSchema, validate
from pipelines.sources import bundled_source, read_chunks
from pipelines.storage import StagedTable, recover, write_parquet_atomic

logger = logging.getLogger(__name__)

# Dimension tables first: flights and weather are checked against their codes.
TABLE_ORDER = ("airlines", "airports", "planes", "weather", "flights")
UNDATED = "undated"
ALL = "all"


@dataclass(frozen=True)
class MonthWindow:
    """Months to take in, inclusive, as YYYY-MM strings; None leaves that side open."""

    since: str | None = None
    until: str | None = None

    def contains(self, months: pd.Series) -> pd.Series:
        inside = pd.Series(True, index=months.index)
        if self.since:
            inside &= months >= self.since
        if self.until:
            inside &= months <= self.until
        return inside


@dataclass
class TableReport:
    table: str
    rows_read: int = 0
    out_of_window: int = 0
    kept: int = 0
    quarantined: int = 0
    months: list[str] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def rows_in(self) -> int:
        """Rows in scope: everything read that falls in the month window."""
        return self.rows_read - self.out_of_window


@dataclass(frozen=True)
class IngestReport:
    tables: dict[str, TableReport]


def month_keys(year: pd.Series, month: pd.Series) -> pd.Series:
    """YYYY-MM per row; `undated` where year or month is missing or impossible."""
    ok = year.notna() & month.notna() & month.between(1, 12) & year.between(1, 9999)
    y = year.where(ok, 0).astype("int64").astype(str).str.zfill(4)
    m = month.where(ok, 0).astype("int64").astype(str).str.zfill(2)
    return (y + "-" + m).where(ok, UNDATED)


def enrich(table: str, kept: pd.DataFrame) -> pd.DataFrame:
    """Add the derived time columns every later stage keys on."""
    if table == "flights":
        return kept.assign(scheduled_departure=local_time(kept, kept["sched_dep_time"]))
    if table == "weather":
        return kept.assign(time_hour=local_time(kept, hour="hour"))
    return kept


def _ingest_table(
    schema: TableSchema,
    source: Path,
    window: MonthWindow,
    codes: Mapping[str, frozenset[str]],
    staged: StagedTable,
    on_rows: Callable[[str, int], None] | None = None,
) -> tuple[TableReport, dict[str, list[pd.DataFrame]], frozenset[str]]:
    """Validate and stage one table; also returns the codes it defines (`code_column`)."""
    report = TableReport(schema.name)
    quarantine: dict[str, list[pd.DataFrame]] = {}
    defined: set[str] = set()
    for chunk in read_chunks(source, schema.columns):
        raw = chunk.frame
        report.rows_read += len(raw)
        if on_rows:
            on_rows(schema.name, report.rows_read)
        result = validate(
            schema, raw, codes.get("airlines", frozenset()), codes.get("airports", frozenset())
        )
        kept, bad = result.kept, result.quarantined
        if schema.code_column:
            defined.update(kept[schema.code_column].dropna())
        if schema.time_partitioned:
            kept_month = month_keys(kept["year"], kept["month"])
            bad_typed = pd.DataFrame(
                {c: pd.to_numeric(bad[c], errors="coerce") for c in ("year", "month")}
            )
            bad_month = month_keys(bad_typed["year"], bad_typed["month"])
            in_kept = window.contains(kept_month)
            in_bad = window.contains(bad_month) | (bad_month == UNDATED)
            report.out_of_window += int((~in_kept).sum() + (~in_bad).sum())
            kept, kept_month = kept[in_kept], kept_month[in_kept]
            bad, bad_month = bad[in_bad], bad_month[in_bad]
            kept = enrich(schema.name, kept)
            if schema.name == "flights":  # sorted parts let readers skip row groups by time
                kept = kept.sort_values("scheduled_departure", kind="stable")
            for month, rows in kept.groupby(kept_month, sort=True):
                staged.write(rows.reset_index(drop=True), f"month={month}")
            for month, rows in bad.groupby(bad_month, sort=True):
                quarantine.setdefault(str(month), []).append(rows.assign(source=str(chunk.path)))
            months = set(kept_month) | set(bad_month)
        else:
            staged.write(enrich(schema.name, kept).reset_index(drop=True))
            if len(bad):
                quarantine.setdefault(ALL, []).append(bad.assign(source=str(chunk.path)))
            months = {ALL}
        report.kept += len(kept)
        report.quarantined += len(bad)
        for reason in bad["reason"]:
            for part in str(reason).split("; "):
                report.reasons[part] = report.reasons.get(part, 0) + 1
        report.months = sorted(set(report.months) | months)
        for month in months:
            quarantine.setdefault(month, [])
    empty = enrich(schema.name, result.kept.iloc[:0])
    written = set(staged.partitions)
    for month in report.months if schema.time_partitioned else []:
        if f"month={month}" not in written and month != UNDATED:
            staged.write(empty, f"month={month}")  # all rows rejected: the month is still replaced
    if not staged.partitions:
        staged.write(empty)  # an empty table still has a schema
    return report, quarantine, frozenset(defined)


def _commit_quarantine(
    layout: DataLayout, table: str, parts: dict[str, list[pd.DataFrame]]
) -> None:
    folder = layout.quarantine(table)
    for key, frames in parts.items():
        path = folder / (f"month={key}.parquet" if key not in (ALL, UNDATED) else f"{key}.parquet")
        if frames and sum(len(f) for f in frames):
            write_parquet_atomic(pd.concat(frames, ignore_index=True), path)
        else:
            path.unlink(missing_ok=True)  # re-ingest replaces, so stale rejects go too


def ingest(
    layout: DataLayout,
    sources: Mapping[str, Path] | None = None,
    window: MonthWindow = MonthWindow(),
    on_table: Callable[[TableReport], None] | None = None,
    on_rows: Callable[[str, int], None] | None = None,
) -> IngestReport:
    """Validate every table, then commit bronze and quarantine; nothing is written on error."""
    sources = dict(sources or {})
    recover(layout.root)
    staged: list[StagedTable] = []
    quarantines: dict[str, dict[str, list[pd.DataFrame]]] = {}
    reports: dict[str, TableReport] = {}
    codes: dict[str, frozenset[str]] = {}
    try:
        for table in TABLE_ORDER:
            source = sources.get(table) or bundled_source(table)
            logger.debug("ingesting %s from %s", table, source)
            table_stage = StagedTable(layout.bronze(table))
            staged.append(table_stage)
            report, quarantines[table], codes[table] = _ingest_table(
                SCHEMAS[table], source, window, codes, table_stage, on_rows
            )
            reports[table] = report
            if on_table:
                on_table(report)
        for table, table_stage in zip(TABLE_ORDER, staged, strict=True):
            table_stage.commit()
            _commit_quarantine(layout, table, quarantines[table])
    finally:
        for table_stage in staged:
            table_stage.abort()
    return IngestReport(reports)
