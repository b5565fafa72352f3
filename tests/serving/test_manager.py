"""What the server does when loading a model goes wrong: a defect refuses the version for good,
anything else is retried with backoff and reported, and nothing reaches a client as a 500."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from pipelines.spec import sha256_of
from serving.app import create_app
from serving.bundle import Bundle
from serving.config import ServeConfig
from serving.manager import FolderSource, RegistrySource

from .conftest import Champion, eventually

TOKEN = {"Authorization": "Bearer t0ken"}
CONFIG = ServeConfig(poll_interval_s=0, admin_token="t0ken")


def test_a_folder_refused_while_it_was_copied_is_loaded_once_the_copy_is_done(
    model_folder: Bundle, tmp_path: Path
) -> None:
    """`cp -r` into a served folder is not atomic: a poll in the middle sees a half folder.
    The refusal is for that content: once the copy has changed it, the folder is tried again."""
    served = tmp_path / "served"
    served.mkdir()
    for name in ("MLmodel", "bundle.json", "model.onnx"):  # the copy has got this far
        shutil.copy(model_folder.folder / name, served / name)
    with TestClient(create_app(CONFIG, FolderSource(served))) as client:
        eventually(lambda: "is missing" in client.get("/model").text, 30, "no first look")
        refused = reload(client)  # remembered for this content
        assert refused.status_code == 409 and "is missing" in refused.json()["detail"]
        shutil.copytree(model_folder.folder / "contract", served / "contract")  # copy done
        loaded = reload(client)
        assert loaded.status_code == 200, loaded.json()
        assert loaded.json()["outcome"] == "loaded"
        assert client.get("/v2/health/ready").status_code == 200


def reload(client: TestClient) -> httpx.Response:
    """POST /admin/reload, again while the poller's own reload is running (409 busy)."""
    while True:
        answer = client.post("/admin/reload", headers=TOKEN)
        if answer.json().get("outcome") != "busy":
            return answer
        time.sleep(0.2)


def _edit_spec(folder: Path, edit: Callable[[dict], None]) -> None:
    """Change the folder's feature spec and record its new sha256, as a newer build would."""
    spec_path = folder / "contract" / "feature_spec.json"
    old = sha256_of(spec_path)
    spec = json.loads(spec_path.read_text())
    edit(spec)
    spec_path.write_text(json.dumps(spec))
    mlmodel = folder / "MLmodel"
    mlmodel.write_text(mlmodel.read_text().replace(old, sha256_of(spec_path)))


def test_a_spec_naming_a_feature_this_server_does_not_compute_is_refused(
    model_folder: Bundle, tmp_path: Path
) -> None:
    """A model trained by a newer transform than the server's: a 409 naming the feature (it
    was a KeyError: a 500 on /admin/reload, a crash at startup)."""
    served = tmp_path / "served"
    shutil.copytree(model_folder.folder, served)
    with TestClient(create_app(CONFIG, FolderSource(served))) as client:
        eventually(lambda: client.get("/v2/health/ready").status_code == 200, 60, "not ready")
        before = client.get("/model").json()["version"]
        _edit_spec(served, lambda spec: spec["numerical"][0].update(name="gate_temperature"))
        refused = reload(client)
        assert refused.status_code == 409, refused.text
        assert "does not compute: gate_temperature" in refused.json()["detail"]
        assert client.get("/model").json()["version"] == before  # the old one keeps serving


def test_an_unreadable_source_is_reported_and_retried_never_a_500(
    model_folder: Bundle, tmp_path: Path
) -> None:
    served = tmp_path / "served"
    shutil.copytree(model_folder.folder, served)
    mlmodel = served / "MLmodel"
    good = mlmodel.read_text()
    mlmodel.write_text("metadata: [unclosed\n")  # a half-written file
    with TestClient(create_app(CONFIG, FolderSource(served))) as client:
        eventually(lambda: "unreachable" in client.get("/model").text, 30, "no problem said")
        assert client.get("/v2/health/live").status_code == 200
        answer = reload(client)
        assert answer.status_code == 503 and answer.headers["retry-after"]
        assert answer.json()["outcome"] == "unavailable"
        mlmodel.write_text(good)
        # retried by itself, with backoff (1 s, 2 s, ...): no /admin/reload needed
        eventually(lambda: client.get("/v2/health/ready").status_code == 200, 30, "not ready")
        assert 'mlops_model_reloads_total{outcome="refused"}' not in client.get("/metrics").text


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of 2 MB (a model bundle is about 5 MB): a real full disk."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"needs root to mount a small tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_fails_the_download_and_the_retry_loads_it_once_there_is_room(
    champion: Champion, small_disk: Path
) -> None:
    """ENOSPC is not a defect of the version: it was refused for good until a restart."""
    uri = champion.tracking_uri
    source = RegistrySource(champion.name, "champion", uri, uri, small_disk)
    app = create_app(ServeConfig(poll_interval_s=300), source)
    with TestClient(app) as api:
        eventually(lambda: "ENOSPC" in api.get("/model").text, 60, "ENOSPC not reported")
        detail = api.get("/model").json()["detail"]
        assert "since" in detail and api.get("/v2/health/live").status_code == 200
        metrics = api.get("/metrics").text
        assert "mlops_model_problem_since_timestamp_seconds 0.0" not in metrics
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
        # the poll interval is 5 minutes: the retry's backoff loads it, not the next poll
        eventually(lambda: api.get("/v2/health/ready").status_code == 200, 40, "not loaded")
        metrics = api.get("/metrics").text
        assert 'mlops_model_reloads_total{outcome="failed"}' in metrics
        assert 'mlops_model_reloads_total{outcome="refused"}' not in metrics
        assert "mlops_model_problem_since_timestamp_seconds 0.0" in metrics
        assert api.get("/model").json()["problem"] is None
