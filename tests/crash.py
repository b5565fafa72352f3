"""The kill -9 harness: an `mlops` command as a subprocess, killed with SIGKILL at a random
moment, and what must hold of MLOPS_HOME afterwards (tests/pipelines/test_crash.py,
tests/serving/test_crash.py).

The whole process group is killed, as an OOM kill or a container stop does: a feature build's
Dask workers die with it instead of writing on as orphans.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipelines.layout import DataLayout
from pipelines.spec import FeatureSpec, sha256_of
from pipelines.storage import STAGING_PREFIX, TMP_SUFFIX, TRASH_PREFIX, read_parquet_folder

from .processes import clean_env

logger = logging.getLogger(__name__)


@dataclass
class Kills:
    """Seeded kill times over a command's typical duration, measured by a clean run first:
    every other one over the whole run, the others over its writing phase (from its first
    change on disk to its end), where the crashes that matter happen; uniform kills alone
    mostly land in imports and reading, long before a short commit."""

    seed: int
    duration_s: float = 0.0
    writes_from_s: float = 0.0  # when the clean run first changed what it writes
    done: list[tuple[float, bool]] = field(default_factory=list)  # (at, killed before the end)

    def measured(self, run: Run) -> Kills:
        self.duration_s, self.writes_from_s = run.duration_s, run.writes_from_s
        return self

    def times(self, count: int) -> list[float]:
        assert self.duration_s > 0, "measure a clean run first"
        rng = random.Random(self.seed)
        start = min(self.writes_from_s, 0.9 * self.duration_s) / self.duration_s
        return [
            rng.uniform(0.02 if i % 2 == 0 else start, 0.95) * self.duration_s for i in range(count)
        ]

    def summary(self) -> str:
        killed = sum(1 for _, k in self.done if k)
        return (
            f"{killed}/{len(self.done)} killed before the end of a {self.duration_s:.1f} s run "
            f"(writing from {self.writes_from_s:.1f} s)"
        )


@dataclass(frozen=True)
class Run:
    duration_s: float
    writes_from_s: float


def _snapshot(roots: tuple[Path, ...]) -> set[tuple[str, int]]:
    """Every path under `roots` with its mtime. The command runs while we look: os.walk skips
    a folder removed under it (Path.rglob raises), and a file gone before its lstat is left out."""
    out = set()
    for root in roots:
        for folder, folders, files in os.walk(root):
            for name in (*folders, *files):
                path = Path(folder) / name
                try:
                    out.add((str(path), path.lstat().st_mtime_ns))
                except FileNotFoundError:  # removed while we looked
                    continue
    return out


def mlops(home: Path, *args: str, cwd: Path, **env: str) -> subprocess.Popen:
    """`mlops ARGS` in a fresh environment on `home`, in its own process group."""
    return subprocess.Popen(
        [sys.executable, "-m", "mlops", *args],
        cwd=cwd,
        env=clean_env(MLOPS_HOME=str(home), **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def run_clean(home: Path, *args: str, cwd: Path, watch: tuple[Path, ...] = (), **env: str) -> Run:
    """`mlops ARGS` to its end (it must succeed): its duration, and when it first changed
    anything under the folders `watch` (polled)."""
    before = _snapshot(watch)
    started = time.monotonic()
    process = mlops(home, *args, cwd=cwd, **env)
    writes_from = None
    while process.poll() is None:
        if writes_from is None and watch and _snapshot(watch) != before:
            writes_from = time.monotonic() - started
        time.sleep(0.05)
    duration = time.monotonic() - started
    _, stderr = process.communicate()
    assert process.returncode == 0, f"mlops {' '.join(args)} failed:\n{stderr[-3000:]}"
    return Run(duration, duration if writes_from is None else writes_from)


def run_killed(home: Path, *args: str, at_s: float, cwd: Path, kills: Kills, **env: str) -> bool:
    """`mlops ARGS`, its process group SIGKILLed `at_s` after the start unless it ended before
    (then it must have succeeded). True when it was killed."""
    process = mlops(home, *args, cwd=cwd, **env)
    try:
        _, stderr = process.communicate(timeout=at_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        kills.done.append((at_s, True))
        return True
    assert process.returncode == 0, f"mlops {' '.join(args)} failed:\n{stderr[-3000:]}"
    kills.done.append((at_s, False))
    return False


def leftovers(home: Path, *also: Path) -> list[Path]:
    """Crash leftovers of every kind under `home` (and folders `also`): temporary files,
    staging and trash folders, the serving cache's staging folders, and feature generations
    other than the current one and the one it replaced (unpublished or superseded)."""
    found = [
        p
        for root in (home, *also)
        for p in root.rglob("*")
        if p.name.startswith((STAGING_PREFIX, TRASH_PREFIX))
        or (p.name.startswith(".") and p.name.endswith((TMP_SUFFIX, ".staging")))
    ]
    layout = DataLayout(home)
    if layout.generations.is_dir():
        names = sorted(p.name for p in layout.generations.iterdir())
        current = layout.pinned().generation
        at = names.index(current) if current in names else -1
        kept = names[max(0, at - 1) : at + 1] if at >= 0 else []
        found += [layout.generations / n for n in names if n not in kept]
    return sorted(found)


def frame_digest(frame: pd.DataFrame) -> tuple[int, int]:
    """(rows, a content hash that ignores row order): equal tables, equal digests."""
    if frame.empty:
        return (0, 0)
    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy("uint64")
    return (len(frame), int(hashed.sum(dtype="uint64")))


Digests = dict[str, tuple[int, int]]


def bronze_digests(layout: DataLayout) -> Digests:
    """Per bronze partition (`table/month=...`, or `table` when not partitioned)."""
    out: Digests = {}
    root = layout.root / "bronze"
    if not root.is_dir():
        return out
    for table in sorted(p for p in root.iterdir() if not p.name.startswith(".")):
        months = [p for p in table.iterdir() if p.name.startswith("month=")]
        for folder in months or [table]:
            out[str(folder.relative_to(root))] = frame_digest(read_parquet_folder(folder))
    return out


@dataclass(frozen=True)
class Build:
    """What identifies a published feature build: its lookups' sha256s and its splits."""

    lookups: dict[str, str]
    splits: Digests


def published_build(layout: DataLayout) -> Build | None:
    """The current build, checked whole: the spec's sha256s are those of the lookup files
    beside it, and no lookup file is missing from the spec. None when nothing is published."""
    if not layout.current.exists():
        assert not layout.current.is_symlink(), f"{layout.current} points to nothing"
        return None
    pinned = layout.pinned()
    assert pinned.spec.is_file(), f"{pinned.build} is published without its spec"
    spec = FeatureSpec.load(pinned.spec)
    files = {str(p.relative_to(pinned.lookups)) for p in pinned.lookups.rglob("*.npz")}
    assert files == set(spec.lookups), f"lookups {sorted(files ^ set(spec.lookups))[:3]}"
    for name, entry in spec.lookups.items():
        actual = sha256_of(pinned.build / entry.path)
        assert actual == entry.sha256, f"{pinned.build}: {name} does not match the spec"
    splits = {
        split: frame_digest(read_parquet_folder(pinned.split(split)))
        for split in spec.splits
        if pinned.split(split).is_dir()
    }
    return Build({n: e.sha256 for n, e in spec.lookups.items()}, splits)
