"""Designed failures -> exit codes and a one-line message: the only place they are mapped.

`MappedErrors` is the click group class of the `mlops` app, so every command, including the
ones under `mlops data`, goes through `invoke` here. Anything that is not an `MlopsError` is a
bug and keeps its traceback (exit code 1).
"""

from __future__ import annotations

from typing import Any

import click
import typer
from typer.core import TyperGroup

from pipelines.errors import (
    ChallengerRejectedError,
    LockLostError,
    MlopsError,
    ModelRefusedError,
    NoDataError,
    RegistryUnavailableError,
    SourceError,
    WriterBusyError,
)
from pipelines.redact import redact

# Most specific first: the first class an error is an instance of decides its code.
EXIT_CODES: dict[type[MlopsError], tuple[int, str]] = {
    SourceError: (3, "a source is not what it claims (the file and column are named)"),
    ChallengerRejectedError: (4, "the gate kept the champion (`promote --require-promotion`)"),
    ModelRefusedError: (5, "a model was refused: failed parity or checksum"),
    RegistryUnavailableError: (6, "MLflow is unreachable"),
    WriterBusyError: (7, "another writer holds MLOPS_HOME's data (the message names it)"),
    LockLostError: (8, "the data lock was lost mid-run: nothing after it was committed"),
    NoDataError: (2, "a step needs one that has not run yet (the message names it)"),
    MlopsError: (2, "another designed failure (the message says which)"),
}
EPILOG = "Exit codes: 0 success; 1 a bug (with a traceback); 2 bad usage, " + "; ".join(
    f"{code} {meaning}" for code, meaning in sorted(set(EXIT_CODES.values())) if code != 2
)


def exit_code(error: MlopsError) -> int:
    return next(code for kind, (code, _) in EXIT_CODES.items() if isinstance(error, kind))


class MappedErrors(TyperGroup):
    """A Typer group whose commands' designed failures end in one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MlopsError as error:
            lines = str(error).splitlines() or [type(error).__name__]
            typer.echo(f"error: {redact(lines[0])}", err=True)
            raise typer.Exit(exit_code(error)) from None
