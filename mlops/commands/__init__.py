"""The `mlops` commands: options in, a flow called, its result rendered. `mlops.cli` registers
them; none imports the app, so the package has no import cycle. A command that needs Dask,
pandera or MLflow imports its flow when it runs: `mlops serve` must be live in a second or two
(it starts without them), and `mlops --help` answers at once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

PathOption = Annotated[
    Path | None, typer.Option(help="CSV/Parquet file or folder (default: bundled)")
]


def given_sources(**paths: Path | None) -> dict[str, Path]:
    """The source options a user gave (`--flights PATH` ...), by table."""
    return {table: path for table, path in paths.items() if path}


def month_option(value: str | None) -> str | None:
    if value is not None and (
        len(value) != 7 or value[4] != "-" or not value.replace("-", "").isdigit()
    ):
        raise typer.BadParameter(f"expected YYYY-MM, got {value!r}")
    return value


def frameworks_option(value: str) -> str:
    """`torch,jax,lightgbm`: known frameworks, each once."""
    from training.config import FRAMEWORKS

    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in FRAMEWORKS]
    if not names or unknown or len(set(names)) != len(names):
        raise typer.BadParameter(
            f"expected distinct names among {', '.join(FRAMEWORKS)}, got {value!r}"
        )
    return ",".join(names)
