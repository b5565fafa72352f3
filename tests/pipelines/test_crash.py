"""`mlops data ingest` and `mlops data features` killed with SIGKILL at random moments
(tests/crash.py): after each kill every bronze partition is whole, the old version or the new
one; the published feature build is whole (its spec's sha256s are its lookups'), the old one or
the new one; and the next clean run leaves no leftover of any kind.

Two versions of the sources alternate, so that the old and the new version of each partition
and build differ and a mix of them shows."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from pipelines.layout import DataLayout
from pipelines.sources import bundled_source

from ..crash import (
    Build,
    Digests,
    Kills,
    Run,
    bronze_digests,
    leftovers,
    published_build,
    run_clean,
    run_killed,
)

logger = logging.getLogger(__name__)

# Three months: one per split of the default plan (train to September, October, November on),
# so a build is complete and small.
SINCE, UNTIL = "2013-09", "2013-11"
VERSIONS = ("A", "B")
VARIED = ("flights", "weather", "planes")  # airports and airlines: the bundled ones in both


@dataclass(frozen=True)
class Version:
    sources: dict[str, Path]
    home: Path  # a clean run's MLOPS_HOME: the serial reference
    bronze: Digests

    def ingest_args(self) -> list[str]:
        args = ["data", "ingest", "--since", SINCE, "--until", UNTIL]
        for table, path in self.sources.items():
            args += [f"--{table}", str(path)]
        return args


@dataclass(frozen=True)
class References:
    versions: dict[str, Version]
    ingest: Run  # the shorter clean ingest


def _sources(folder: Path, version: str) -> dict[str, Path]:
    """The bundled flights, weather and planes (A); B drops every fifth flight, every fourth
    weather hour and ten planes, so every partition of B differs from A's."""
    folder.mkdir()
    out = {}
    for table in VARIED:
        raw = pd.read_csv(bundled_source(table), dtype=str, keep_default_na=False)
        if version == "B":
            step = {"flights": 5, "weather": 4}.get(table)
            raw = raw[raw.index % step != 0] if step else raw.iloc[10:]
        out[table] = folder / f"{table}.csv"
        raw.to_csv(out[table], index=False)
    return out


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> References:
    root = tmp_path_factory.mktemp("crash-references")
    versions, runs = {}, []
    for name in VERSIONS:
        sources = _sources(root / f"sources-{name}", name)
        home = root / f"home-{name}"
        version = Version(sources, home, {})
        runs.append(run_clean(home, *version.ingest_args(), cwd=root, watch=(home / "data",)))
        versions[name] = Version(sources, home, bronze_digests(DataLayout(home)))
    assert versions["A"].bronze.keys() == versions["B"].bronze.keys()
    varied = [p for p in versions["A"].bronze if p.split("/")[0] in VARIED]
    assert all(versions["A"].bronze[p] != versions["B"].bronze[p] for p in varied)
    return References(versions, min(runs, key=lambda run: run.duration_s))


@pytest.mark.parametrize(
    "count, seed",
    [pytest.param(3, 13, id="fast"), pytest.param(15, 1013, id="all", marks=pytest.mark.slow)],
)
def test_ingest_killed_at_random_leaves_every_month_old_or_new(
    references: References, tmp_path: Path, count: int, seed: int
) -> None:
    home = tmp_path / "home"
    _use_bronze(home, references.versions[VERSIONS[1]])  # the first kill has an old version
    kills = Kills(seed).measured(references.ingest)
    state = bronze_digests(DataLayout(home))
    for i, at in enumerate(kills.times(count)):
        version = references.versions[VERSIONS[i % 2]]
        run_killed(home, *version.ingest_args(), at_s=at, cwd=tmp_path, kills=kills)
        now = bronze_digests(DataLayout(home))
        for part in sorted(set(now) | set(state) | set(version.bronze)):
            assert now.get(part) in (state.get(part), version.bronze.get(part)), (
                f"kill {i} at {at:.2f} s: {part} is neither its old nor its new version"
            )
        state = now
    last = references.versions["A"]
    run_clean(home, *last.ingest_args(), cwd=tmp_path)
    assert bronze_digests(DataLayout(home)) == last.bronze
    assert leftovers(home) == []
    logger.warning("ingest: %s", kills.summary())


@dataclass(frozen=True)
class Builds:
    built: dict[str, Build]  # by version
    homes: dict[str, Path]  # the clean runs' MLOPS_HOMEs
    typical: Run  # the shorter clean run


@pytest.fixture(scope="module")
def builds(references: References, tmp_path_factory: pytest.TempPathFactory) -> Builds:
    """Each version's bronze built by a clean run: the serial references."""
    built, homes, runs = {}, {}, []
    for name, version in references.versions.items():
        home = homes[name] = tmp_path_factory.mktemp(f"build-{name}")
        _use_bronze(home, version)
        runs.append(run_clean(home, "data", "features", cwd=home, watch=(home / "data",)))
        build = published_build(DataLayout(home))
        assert build is not None
        built[name] = build
    assert built["A"].lookups != built["B"].lookups and built["A"].splits != built["B"].splits
    return Builds(built, homes, min(runs, key=lambda run: run.duration_s))


def _use_bronze(home: Path, version: Version) -> None:
    """Set `home`'s bronze to a version's (a copy: what a completed ingest would leave)."""
    bronze = DataLayout(home).root / "bronze"
    shutil.rmtree(bronze, ignore_errors=True)
    shutil.copytree(DataLayout(version.home).root / "bronze", bronze)


@pytest.mark.parametrize(
    "count, seed",
    [pytest.param(2, 17, id="fast"), pytest.param(15, 1017, id="all", marks=pytest.mark.slow)],
)
def test_feature_build_killed_at_random_is_published_whole_or_not_at_all(
    references: References,
    builds: Builds,
    tmp_path: Path,
    count: int,
    seed: int,
) -> None:
    home = tmp_path / "home"
    first = DataLayout(builds.homes[VERSIONS[1]]).root  # the first kill has an old build
    shutil.copytree(first, home / "data", symlinks=True)
    kills = Kills(seed).measured(builds.typical)
    state = published_build(DataLayout(home))
    assert state == builds.built[VERSIONS[1]]
    for i, at in enumerate(kills.times(count)):
        name = VERSIONS[i % 2]
        _use_bronze(home, references.versions[name])
        run_killed(home, "data", "features", at_s=at, cwd=tmp_path, kills=kills)
        now = published_build(DataLayout(home))  # whole, or it fails here
        assert now in (state, builds.built[name]), f"kill {i} at {at:.2f} s: a build of neither"
        state = now
    _use_bronze(home, references.versions["A"])
    run_clean(home, "data", "features", cwd=tmp_path)
    assert published_build(DataLayout(home)) == builds.built["A"]
    assert leftovers(home) == []
    logger.warning("features: %s", kills.summary())
