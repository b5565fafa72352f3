"""The `mlops` command line: a thin edge that builds settings and calls the stages."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

from mlops.settings import Settings
from pipelines.errors import PipelineError, SourceError

app = typer.Typer(
    help="An end-to-end MLOps pipeline on the nycflights13 data.", no_args_is_help=True
)
data_app = typer.Typer(
    help="The data pipeline: ingest, features, synthetic data.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
console = Console(stderr=True)

EXIT_CODES: dict[type[Exception], int] = {SourceError: 3, PipelineError: 2}


def _exit_code(error: Exception) -> int:
    for kind, code in EXIT_CODES.items():
        if isinstance(error, kind):
            return code
    return 1


@app.callback()
def main(
    ctx: typer.Context,
    home: Annotated[Path | None, typer.Option(help="State folder (MLOPS_HOME)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    settings = Settings() if home is None else Settings(home=home)
    ctx.obj = settings


def fail(error: Exception) -> typer.Exit:
    console.print(f"[bold red]error:[/] {error}")
    return typer.Exit(_exit_code(error))


# The command modules register themselves on `app` and `data_app`.
from mlops import (  # noqa: E402
    commands_data,
    commands_promote,
    commands_retrain,
    commands_run,
    commands_serve,
    commands_train,
    commands_tune,
)

__all__ = [
    "app",
    "commands_data",
    "commands_promote",
    "commands_retrain",
    "commands_run",
    "commands_serve",
    "commands_train",
    "commands_tune",
]
