"""`mlops export` killed with SIGKILL at random moments (tests/crash.py), with the serving
cache warm (the kill lands in copying and swapping the model folder) and cold (it lands in the
download into the cache): the exported folder is whole, the old model or the new one; each
cached version is whole or absent; and the next clean run leaves no leftover of any kind.

Two registered versions of one model alternate, so the old and the new folder differ."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from serving.bundle import read_bundle, verify
from training.config import TrackingConfig

from ..crash import Kills, leftovers, run_clean, run_killed
from .conftest import Champion

logger = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def registry(champion: Champion, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """A copy of the champion's registry (its artifacts stay where they are, read only) with a
    second version of the same model, and the two versions."""
    folder = tmp_path_factory.mktemp("crash-registry")
    shutil.copy(champion.home / "mlflow.db", folder / "mlflow.db")
    client = TrackingConfig(folder).client()
    first = client.get_model_version(champion.name, champion.version)
    second = client.create_model_version(champion.name, first.source, first.run_id)
    return folder / "mlflow.db", [str(first.version), str(second.version)]


def _exported(folder: Path) -> str | None:
    """The version exported in `folder`, checked whole against its sha256s; None if absent."""
    if not folder.exists():
        return None
    bundle = read_bundle(folder)
    verify(bundle)
    return bundle.version


def _export(output: Path, version: str) -> list[str]:
    return ["export", "--output", str(output), "--version", version]


@pytest.mark.parametrize(
    "cache, count, seed",
    [
        pytest.param("warm", 2, 19, id="warm-fast", marks=pytest.mark.slow),
        pytest.param("cold", 2, 23, id="cold-fast"),
        pytest.param("warm", 10, 1019, id="warm-all", marks=pytest.mark.slow),
        pytest.param("cold", 10, 1023, id="cold-all", marks=pytest.mark.slow),
    ],
)
def test_export_killed_at_random_leaves_a_whole_model_folder(
    registry: tuple[Path, list[str]], tmp_path: Path, cache: str, count: int, seed: int
) -> None:
    database, versions = registry
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(database, home / "mlflow.db")
    models = home / "serving" / "models" / "flight-delay"
    output = tmp_path / "exported" / "model"
    watch = (output.parent, models.parent)
    runs = [run_clean(home, *_export(output, v), cwd=tmp_path, watch=watch) for v in versions]
    # the first run downloads (cold cache), the second only copies: time the kind to be killed
    kills = Kills(seed).measured(runs[0] if cache == "cold" else runs[1])
    state = _exported(output)
    for i, at in enumerate(kills.times(count)):
        version = versions[i % 2]
        if cache == "cold":
            shutil.rmtree(models / version, ignore_errors=True)  # leftovers of a crash stay
        run_killed(home, *_export(output, version), at_s=at, cwd=tmp_path, kills=kills)
        now = _exported(output)
        assert now in (state, version), f"kill {i} at {at:.2f} s: exported {now}"
        state = now
        cached = [p for p in models.iterdir() if not p.name.startswith(".")]
        assert all(_exported(p) == p.name for p in cached)  # each one whole
    shutil.rmtree(models / versions[0], ignore_errors=True)  # the clean run downloads again
    run_clean(home, *_export(output, versions[0]), cwd=tmp_path)
    assert _exported(output) == versions[0]
    assert leftovers(home, output.parent) == []
    logger.warning("export (%s cache): %s", cache, kills.summary())
