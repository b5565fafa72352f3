"""A model bundle in the cache: downloaded whole by one process while the others wait, and
refused when it holds a file the registry did not record."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serving.bundle import Bundle, ModelRejectedError, read_bundle, verify

from .conftest import Champion

DOWNLOAD = """
import sys, time
from pathlib import Path
from serving.bundle import download_version, verify
from training.config import TrackingConfig
home, name, version, cache, start = sys.argv[1:]
client = TrackingConfig(Path(home)).client()
client.get_model_version(name, version)  # MLflow imported and connected before the start
time.sleep(max(0.0, float(start) - time.time()))
verify(download_version(client, name, version, Path(cache)))
"""


def test_workers_downloading_one_version_at_once_all_get_it_whole(
    champion: Champion, tmp_path: Path
) -> None:
    """What `mlops serve --workers N` does on a cold cache: N processes ask for one version
    at the same moment (before the lock, some found a half-replaced folder and refused it)."""
    for attempt in range(2):
        cache = tmp_path / f"cache-{attempt}"
        start = time.time() + 8  # every process is past its imports by then
        args = [champion.home, champion.name, champion.version, cache, start]
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", DOWNLOAD, *map(str, args)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(4)
        ]
        outputs = [worker.communicate(timeout=120)[0] for worker in workers]
        for worker, output in zip(workers, outputs, strict=True):
            assert worker.returncode == 0, output
        versions = [
            p.name for p in (cache / champion.name).iterdir() if not p.name.endswith(".lock")
        ]
        assert versions == [champion.version]  # no staging folder left behind


@pytest.fixture
def bundle(model_folder: Bundle, tmp_path: Path) -> Bundle:
    shutil.copytree(model_folder.folder, tmp_path / "model")
    return read_bundle(tmp_path / "model")


def test_a_file_the_registry_did_not_record_is_refused(bundle: Bundle) -> None:
    """The server loads every .npz of a lookup folder: one slipped in would change predictions
    unchecked (it changed one from 0.138 to 0.091)."""
    verify(bundle)
    events = bundle.lookups / "flight_events"
    planted = events / "2099-01.npz"
    shutil.copy(next(events.glob("*.npz")), planted)
    with pytest.raises(ModelRejectedError, match=r"2099-01\.npz is not recorded in the registry"):
        verify(bundle)
    planted.unlink()
    (bundle.folder / "contract" / "notes.txt").write_text("anything")
    with pytest.raises(ModelRejectedError, match=r"notes\.txt is not recorded"):
        verify(bundle)


def test_crashed_downloads_are_removed_but_not_one_in_progress(tmp_path: Path) -> None:
    from filelock import FileLock

    from serving.bundle import _remove_crashed_downloads

    crashed, live = tmp_path / ".3.aaaa.staging", tmp_path / ".4.bbbb.staging"
    for folder in (crashed, live):
        (folder / "contract").mkdir(parents=True)
    with FileLock(tmp_path / ".4.lock"):  # version 4 is being downloaded by another process
        _remove_crashed_downloads(tmp_path)
    assert not crashed.exists() and live.exists()
