"""Errors the data pipeline raises; the CLI maps them to exit codes."""

from __future__ import annotations

from pathlib import Path


class PipelineError(Exception):
    """Base class for errors the pipeline raises on purpose."""


class SourceError(PipelineError):
    """A source file is not what it claims: unreadable, the wrong format, or columns missing."""

    def __init__(self, path: Path | str, problem: str, column: str | None = None) -> None:
        self.path = Path(path)
        self.column = column
        self.problem = problem
        where = f"{self.path}" + (f", column '{column}'" if column else "")
        super().__init__(f"{where}: {problem}")


class NoDataError(PipelineError):
    """A stage found nothing to work on (for example, features before any ingest)."""
