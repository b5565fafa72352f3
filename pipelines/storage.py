"""Writes that never leave a half-written output behind, and the two table formats.

This module is the one home for atomic writes. Every output becomes visible by one rename of
something already complete, so a kill -9 at any moment leaves the old version or the new one:

- Single files are written under a temporary name (`.<name>.<uuid>.tmp`) and renamed into
  place (`os.replace` is atomic on one filesystem).
- Folders (a bronze partition, an exported model) are written into a staging folder and
  swapped in (`swap_in`): on Linux in one `renameat2(RENAME_EXCHANGE)`, so the folder is never
  absent; elsewhere by two renames, the old folder parked as `.trash-*` in between, which
  `recover` puts back if a crash came between them. Re-ingesting a month replaces it.
- A feature build (splits, lookups and the spec that records the lookups' sha256s) is a whole
  generation folder, published by replacing one symlink (`publish_generation`); see
  `pipelines.layout`.

Against power loss as well as kill -9, what a rename publishes is fsynced before it (each file,
then each folder bottom up) and the parent folder after it, so the rename itself is durable.

Crash leftovers (`*.tmp` files, `.staging-*` and `.trash-*` folders, unpublished generations)
are removed by `recover` and `prune_generations` at the start of the next writer's run. They
must only run where no other writer of the same data is live (the data writer lock).

Bronze, quarantine and feature tables are Parquet (pyarrow, imported when used). The online
lookup tables are `.npz` files of plain numpy arrays (`write_npz_table`): the server reads them
with numpy alone and never with pickle (it writes Parquet only for its prediction log).
"""

from __future__ import annotations

import ctypes
import errno
import io
import logging
import os
import shutil
import sys
import time
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"
TMP_SUFFIX = ".tmp"
ROW_GROUP_ROWS = 64_000


def fsync_file(path: Path) -> None:
    """Flush a file's data to disk (any descriptor of the file does)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries, so a rename or a new file in it survives a power loss.
    Windows cannot open a folder, and its renames need no such step."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Every file under `root`, then every folder bottom up: all of it durable before the
    rename that publishes it."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            fsync_file(Path(folder) / name)
        fsync_dir(Path(folder))


def _write_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """Call `write` on a temporary name in the same folder, fsync it, then rename it to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}{TMP_SUFFIX}")
    try:
        write(tmp)
        fsync_file(tmp)
        tmp.replace(path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # pyarrow converts the columns on a thread pool it starts per call: for a small frame (the
    # prediction log's second of rows) starting it costs more than it saves
    threads = 1 if len(frame) < ROW_GROUP_ROWS else None
    table = pa.Table.from_pandas(frame, preserve_index=False, nthreads=threads)
    pq.write_table(table, path, compression="zstd", row_group_size=ROW_GROUP_ROWS)


def write_parquet_atomic(frame: pd.DataFrame, path: Path) -> Path:
    return _write_atomic(path, lambda tmp: write_parquet(frame, tmp))


def write_bytes_atomic(data: bytes, path: Path) -> Path:
    return _write_atomic(path, lambda tmp: tmp.write_bytes(data))


COLUMNS_KEY = "__columns__"  # the column names, in order
MISSING_SUFFIX = ".missing"  # a text column's missing-value mask
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed member times: the same table gives the same bytes
# zlib's fastest level: the feature build writes every partition's events through here (a
# fifth of the Dask build's CPU at level 6, zlib's default)
NPZ_COMPRESSLEVEL = 1


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
            serialized = io.BytesIO()
            np.lib.format.write_array(serialized, np.ascontiguousarray(array), allow_pickle=False)
            archive.writestr(
                member,
                serialized.getbuffer(),
                compress_type=zipfile.ZIP_DEFLATED,
                compresslevel=NPZ_COMPRESSLEVEL,
            )
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


def _libc_renameat2():  # -> the C function, or None where the C library has none
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc < 2.28, or a libc without it
        return None


_RENAMEAT2 = _libc_renameat2()
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step; False where the OS or filesystem cannot."""
    if _RENAMEAT2 is None:
        return False
    done = _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if done == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def swap_in(staged: Path, final: Path) -> None:
    """Replace folder `final` by `staged` (fsynced first). Where the OS can, both are exchanged
    in one step and `staged` then holds the old folder; otherwise the old one is moved aside
    first (a crash between the renames is undone by `recover`). The old folder is deleted."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fsync_tree(staged)
    if final.exists() and exchange(staged, final):
        fsync_dir(final.parent)
        shutil.rmtree(staged, ignore_errors=True)
        return
    trash = final.with_name(f"{TRASH_PREFIX}{final.name}-{uuid.uuid4().hex}")
    if final.exists():
        final.replace(trash)
    staged.replace(final)
    fsync_dir(final.parent)
    shutil.rmtree(trash, ignore_errors=True)


def _is_leftover_file(entry: Path) -> bool:
    """A `_write_atomic` temporary (or `publish_generation`'s link) a crash left behind."""
    return (
        entry.name.startswith(".")
        and entry.name.endswith(TMP_SUFFIX)
        and not (entry.is_dir() and not entry.is_symlink())
    )


def recover_entry(entry: Path) -> bool:
    """Clean `entry` if it is a crash leftover (True): a temporary file or a staging folder is
    removed; a trash folder is put back where its original is missing, removed otherwise."""
    if _is_leftover_file(entry):
        entry.unlink(missing_ok=True)
    elif entry.name.startswith(TRASH_PREFIX):
        original = entry.with_name(entry.name.removeprefix(TRASH_PREFIX).rsplit("-", 1)[0])
        if original.exists():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            logger.warning("restoring %s after an interrupted swap", original)
            entry.replace(original)
    elif entry.name.startswith(STAGING_PREFIX):
        shutil.rmtree(entry, ignore_errors=True)
    else:
        return False
    return True


def recover(root: Path) -> None:
    """Undo what a crash left anywhere under `root`: see `recover_entry`."""
    if not root.is_dir() or root.is_symlink():  # a symlink's target is visited by its own path
        return
    for entry in root.iterdir():
        if not recover_entry(entry) and entry.is_dir() and not entry.is_symlink():
            recover(entry)


def recover_target(final: Path) -> None:
    """Undo what a crash left beside one folder that `swap_in` replaces (its own `.staging-` and
    `.trash-` siblings only): for outputs in a user's folder, where `recover` must not walk."""
    if not final.parent.is_dir():
        return
    for entry in final.parent.iterdir():
        # `.staging-model-<hex>` is ours; `.staging-model-2-<hex>` is model-2's
        if entry.name.rsplit("-", 1)[0] in (STAGING_PREFIX + final.name, TRASH_PREFIX + final.name):
            recover_entry(entry)


def staging_for(final: Path) -> Path:
    """A fresh staging folder's path beside `final`, named so that `recover_target` finds it."""
    return final.with_name(f"{STAGING_PREFIX}{final.name}-{uuid.uuid4().hex[:12]}")


def new_generation(generations: Path) -> Path:
    """A fresh generation folder's path; names sort by creation time, which
    `prune_generations` relies on."""
    now = time.time_ns()  # one reading: a second and a fraction read apart can roll over between
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 10**9))
    return generations / f"{stamp}-{now % 10**9:09d}-{uuid.uuid4().hex[:8]}"


def current_generation(link: Path) -> Path | None:
    """The generation `link` points to, or None when nothing is published."""
    if not link.is_symlink():
        return None
    return link.parent / link.readlink()


def publish_generation(generation: Path, link: Path) -> None:
    """Make a complete generation the current one in one step: everything in it is fsynced,
    then `link` is replaced by a symlink to it (a rename over the old link), then fsynced."""
    fsync_tree(generation)
    fsync_dir(generation.parent)
    tmp = link.with_name(f".{link.name}.{uuid.uuid4().hex}{TMP_SUFFIX}")
    tmp.symlink_to(os.path.relpath(generation, link.parent), target_is_directory=True)
    try:
        tmp.replace(link)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(link.parent)


def prune_generations(generations: Path, link: Path) -> list[Path]:
    """Remove every generation but the current one and the one it replaced (a reader that
    resolved that one, a training run that started before the build, keeps its files until
    the next build). Newer than the current means never published: a crashed build's."""
    current = current_generation(link)
    if not generations.is_dir():
        return []
    names = sorted(p.name for p in generations.iterdir() if not p.name.startswith("."))
    keep: set[str] = set()
    if current is not None and current.name in names:
        at = names.index(current.name)
        keep = {current.name, *names[max(0, at - 1) : at]}
    removed = [generations / n for n in names if n not in keep]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


class StagedTable:
    """Collects a table's parts under a staging folder and swaps them into place on commit.

    `partition=None` means an unpartitioned table: the whole table folder is replaced.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.staging = staging_for(root)
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


def parquet_files(folder: Path) -> list[Path]:
    """The parquet files that make the table under `folder`, in its row order (hidden and
    staging files excluded)."""
    return sorted(
        p
        for p in folder.rglob("*.parquet")
        if not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def read_parquet_folder(folder: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Read every parquet file under `folder` (`parquet_files`)."""
    files = parquet_files(folder)
    if not files:
        return pd.DataFrame(columns=columns or [])
    return pd.concat([pd.read_parquet(p, columns=columns) for p in files], ignore_index=True)
