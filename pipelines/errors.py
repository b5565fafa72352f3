"""The designed failures of every package, under one root.

Library code raises these; the edges map them (`mlops.errors`: exit codes and a one-line
message; the app: 4xx/503 responses). Anything else that escapes is a bug and keeps its
traceback. This module sits in `pipelines` because every other package may import it.
"""

from __future__ import annotations

from pathlib import Path


class MlopsError(Exception):
    """A failure the code expects and can explain in one line."""


class PipelineError(MlopsError):
    """Base class for errors the data pipeline raises on purpose."""


class SourceError(PipelineError):
    """A source file is not what it claims: unreadable, the wrong format, or columns missing."""

    def __init__(self, path: Path | str, problem: str, column: str | None = None) -> None:
        self.path = Path(path)
        self.column = column
        self.problem = problem
        where = f"{self.path}" + (f", column '{column}'" if column else "")
        super().__init__(f"{where}: {problem}")


class NoDataError(PipelineError):
    """A stage found nothing to work on: features before ingest, training before features."""


class ModelRefusedError(MlopsError):
    """A model that must not be registered or served: a failed check, a wrong checksum."""


class RegistryUnavailableError(MlopsError):
    """The MLflow tracking server or registry did not answer."""


class ChallengerRejectedError(MlopsError):
    """The gate kept the champion (raised only where the caller asked for a promotion)."""


class WriterBusyError(MlopsError):
    """Another process holds MLOPS_HOME's data lock (the message names it)."""


class LockUnavailableError(WriterBusyError):
    """The data lock's database cannot be reached, so nobody can say who writes."""


class LockLostError(MlopsError):
    """The data lock was lost while held (a database restart cut its session): the work
    stopped before its next commit or gate."""
