"""Writes that never leave a half-written output behind, and the two table formats.

Single files are written under a temporary name and renamed into place (`os.replace` is atomic
on one filesystem). Partitioned tables are written into a staging folder and each partition
folder is swapped in only on commit, so an interrupted run leaves every previous partition
intact, and re-ingesting a month replaces it instead of adding to it.

Bronze, quarantine and feature tables are Parquet (pyarrow, imported when used). The online
lookup tables are `.npz` files of plain numpy arrays (`write_npz_table`): the server reads them
with numpy alone and never with pickle, so the serving image needs no pyarrow.
"""

from __future__ import annotations

import io
import logging
import shutil
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"
ROW_GROUP_ROWS = 64_000


def _write_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """Call `write` on a temporary name in the same folder, then rename it to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, path, compression="zstd", row_group_size=ROW_GROUP_ROWS)


def write_parquet_atomic(frame: pd.DataFrame, path: Path) -> Path:
    return _write_atomic(path, lambda tmp: write_parquet(frame, tmp))


def write_bytes_atomic(data: bytes, path: Path) -> Path:
    return _write_atomic(path, lambda tmp: tmp.write_bytes(data))


COLUMNS_KEY = "__columns__"  # the column names, in order
MISSING_SUFFIX = ".missing"  # a text column's missing-value mask
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed member times: the same table gives the same bytes


def write_npz_table(frame: pd.DataFrame, path: Path) -> Path:
    """A table as an `.npz` of plain arrays, atomically: numbers as float64 (NaN for missing),
    booleans as bool, datetimes as datetime64[ns], text as fixed-width unicode with a
    missing-value mask. No object arrays, so `read_npz_table` never needs pickle; equal
    tables give identical bytes (the spec records their sha256)."""
    arrays: dict[str, np.ndarray] = {COLUMNS_KEY: np.array(list(frame.columns), dtype=str)}
    for name, series in frame.items():
        if pd.api.types.is_datetime64_any_dtype(series):
            arrays[name] = series.to_numpy("datetime64[ns]")
        elif pd.api.types.is_bool_dtype(series) and not series.isna().any():
            arrays[name] = series.to_numpy(bool)
        elif pd.api.types.is_numeric_dtype(series):
            arrays[name] = series.to_numpy("float64", na_value=np.nan)
        else:
            values = series.astype(object).to_numpy()
            missing = pd.isna(values)
            arrays[name] = np.where(missing, "", values).astype(str)
            arrays[name + MISSING_SUFFIX] = missing
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, array in arrays.items():
            member = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_EPOCH)
            member.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(member, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.ascontiguousarray(array), allow_pickle=False)
    return write_bytes_atomic(buffer.getvalue(), path)


def read_npz_table(path: Path) -> pd.DataFrame:
    """The table `write_npz_table` wrote: text columns as objects with None for missing."""
    with np.load(path, allow_pickle=False) as archive:
        columns = {}
        for name in archive[COLUMNS_KEY].tolist():
            values = archive[name]
            if values.dtype.kind == "U":
                text = values.astype(object)
                text[archive[name + MISSING_SUFFIX]] = None
                values = text
            columns[name] = values
    return pd.DataFrame(columns)


def read_npz_folder(folder: Path) -> pd.DataFrame:
    """Every `.npz` table in `folder`, in name order, as one table."""
    files = sorted(folder.glob("*.npz"))
    if not files:
        raise FileNotFoundError(f"{folder}: no .npz tables")
    return pd.concat([read_npz_table(f) for f in files], ignore_index=True)


def swap_in(staged: Path, final: Path) -> None:
    """Replace folder `final` by `staged`; the old one is moved aside, then deleted."""
    final.parent.mkdir(parents=True, exist_ok=True)
    trash = final.with_name(f"{TRASH_PREFIX}{final.name}-{uuid.uuid4().hex}")
    if final.exists():
        final.replace(trash)
    staged.replace(final)
    shutil.rmtree(trash, ignore_errors=True)


def recover(root: Path) -> None:
    """Undo what a crash between the two renames of `swap_in` or mid-staging left under `root`."""
    if not root.is_dir():
        return
    for entry in root.iterdir():
        if entry.name.startswith(TRASH_PREFIX):
            original = entry.with_name(entry.name.removeprefix(TRASH_PREFIX).rsplit("-", 1)[0])
            if original.exists():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                logger.warning("restoring %s after an interrupted swap", original)
                entry.replace(original)
        elif entry.name.startswith(STAGING_PREFIX):
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.is_dir():
            recover(entry)


class StagedTable:
    """Collects a table's parts under a staging folder and swaps them into place on commit.

    `partition=None` means an unpartitioned table: the whole table folder is replaced.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.staging = root.parent / f"{STAGING_PREFIX}{root.name}-{uuid.uuid4().hex[:12]}"
        self._parts: dict[str | None, int] = {}

    def write(self, frame: pd.DataFrame, partition: str | None = None) -> Path:
        index = self._parts.get(partition, 0)
        self._parts[partition] = index + 1
        folder = self.staging / partition if partition else self.staging
        path = folder / f"part-{index:05d}.parquet"
        folder.mkdir(parents=True, exist_ok=True)
        write_parquet(frame, path)
        return path

    @property
    def partitions(self) -> list[str | None]:
        return list(self._parts)

    def commit(self) -> None:
        if None in self._parts:
            swap_in(self.staging, self.root)
            return
        for partition in self._parts:
            assert partition is not None
            swap_in(self.staging / partition, self.root / partition)
        shutil.rmtree(self.staging, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def read_parquet_folder(folder: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Read every parquet file under `folder` (hidden and staging files excluded)."""
    files = sorted(
        p
        for p in folder.rglob("*.parquet")
        if not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not files:
        return pd.DataFrame(columns=columns or [])
    return pd.concat([pd.read_parquet(p, columns=columns) for p in files], ignore_index=True)
