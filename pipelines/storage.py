"""Parquet writes that never leave a half-written output behind.

Single files are written under a temporary name and renamed into place (`os.replace` is atomic
on one filesystem). Partitioned tables are written into a staging folder and each partition
folder is swapped in only on commit, so an interrupted run leaves every previous partition
intact, and re-ingesting a month replaces it instead of adding to it.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

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
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, path, compression="zstd", row_group_size=ROW_GROUP_ROWS)


def write_parquet_atomic(frame: pd.DataFrame, path: Path) -> Path:
    return _write_atomic(path, lambda tmp: write_parquet(frame, tmp))


def write_bytes_atomic(data: bytes, path: Path) -> Path:
    return _write_atomic(path, lambda tmp: tmp.write_bytes(data))


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
