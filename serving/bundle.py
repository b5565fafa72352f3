"""A model bundle on disk: the ONNX file, its MLmodel metadata and its feature contract.

The layout is what the registry holds for a version and what `mlops export` writes:

    <folder>/MLmodel                      metadata: onnx_sha256, feature_spec_sha256, lookups
    <folder>/model.onnx
    <folder>/contract/feature_spec.json
    <folder>/contract/lookups/...         the online lookup tables
    <folder>/contract/parity_sample.json  inputs and torch's probabilities for a few rows
    <folder>/bundle.json                  name, version and source (written by us)

Nothing here unpickles anything: YAML is read with `safe_load`, JSON with `json`, the model
is ONNX and the lookups are numpy `.npz` files read with `allow_pickle=False`. Every file is
checked against the sha256 recorded when the model was logged before a server may use it.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from filelock import FileLock, Timeout

from pipelines.errors import ModelRefusedError
from pipelines.spec import sha256_of
from pipelines.storage import fsync_dir, fsync_tree

if TYPE_CHECKING:
    from mlflow import MlflowClient

ONNX_FILE = "model.onnx"
CONTRACT = "contract"
BUNDLE_FILE = "bundle.json"
STAGING_SUFFIX = ".staging"  # `.<version>.<uuid>.staging`: a download in progress, or a crash's


class ModelRejectedError(ModelRefusedError):
    """A model that must not be served, and why."""


@dataclass(frozen=True)
class Bundle:
    folder: Path
    name: str
    version: str
    source: str
    metadata: dict

    @property
    def onnx(self) -> Path:
        return self.folder / ONNX_FILE

    @property
    def spec(self) -> Path:
        return self.folder / CONTRACT / "feature_spec.json"

    @property
    def lookups(self) -> Path:
        return self.folder / CONTRACT / "lookups"

    @property
    def parity_sample(self) -> Path:
        return self.folder / CONTRACT / "parity_sample.json"

    @property
    def decision_threshold(self) -> float:
        return float(self.metadata["decision_threshold"])

    @property
    def holdout(self) -> dict[str, float]:
        """The model's figures on its holdout, as training recorded them (none in models
        trained before it did): what its realized quality is held against."""
        return {k: float(v) for k, v in (self.metadata.get("holdout") or {}).items()}


def read_bundle(folder: Path, name: str | None = None, version: str | None = None) -> Bundle:
    """The bundle in `folder`, its name and version from bundle.json unless given."""
    mlmodel = folder / "MLmodel"
    if not mlmodel.is_file():
        raise ModelRejectedError(f"{folder} is not a model folder: it has no MLmodel file")
    metadata = (yaml.safe_load(mlmodel.read_text()) or {}).get("metadata") or {}
    about = (
        json.loads((folder / BUNDLE_FILE).read_text()) if (folder / BUNDLE_FILE).is_file() else {}
    )
    return Bundle(
        folder=folder,
        name=name or about.get("name", folder.name),
        version=str(version or about.get("version", "local")),
        source=about.get("source", str(folder)),
        metadata=metadata,
    )


def verify(bundle: Bundle) -> None:
    """Every file against its recorded sha256; ModelRejectedError names the first mismatch."""
    recorded = bundle.metadata
    for key in ("onnx_sha256", "feature_spec_sha256", "decision_threshold"):
        if key not in recorded:
            raise ModelRejectedError(
                f"{bundle.name} v{bundle.version}: MLmodel metadata lacks {key}"
            )
    expected = {bundle.onnx: recorded["onnx_sha256"], bundle.spec: recorded["feature_spec_sha256"]}
    spec = json.loads(bundle.spec.read_text()) if bundle.spec.is_file() else {}
    lookups = recorded.get("lookups") or {}
    for name, entry in spec.get("lookups", {}).items():
        if lookups.get(name) != entry["sha256"]:
            raise ModelRejectedError(f"lookup {name}: the spec and the model metadata disagree")
        # lookups paths are relative to the feature build: <build>/lookups/x -> contract/lookups/x
        expected[bundle.folder / CONTRACT / entry["path"]] = entry["sha256"]
    for path, digest in expected.items():
        if not path.is_file():
            raise ModelRejectedError(f"{bundle.name} v{bundle.version}: {path.name} is missing")
        actual = sha256_of(path)
        if actual != digest:
            raise ModelRejectedError(
                f"{bundle.name} v{bundle.version}: sha256 of {path.relative_to(bundle.folder)} "
                f"is {actual[:12]}..., the registry recorded {str(digest)[:12]}..."
            )
    if not bundle.parity_sample.is_file():
        raise ModelRejectedError(
            f"{bundle.name} v{bundle.version}: no parity sample in its contract"
        )
    # The server reads the contract folder whole (every .npz of a lookup folder): a file the
    # registry did not record is refused, not loaded unchecked.
    known = {*expected, bundle.parity_sample}
    unknown = sorted(
        str(path.relative_to(bundle.folder))
        for path in (bundle.folder / CONTRACT).rglob("*")
        if path not in known and not path.is_dir()
    )
    if unknown:
        raise ModelRejectedError(
            f"{bundle.name} v{bundle.version}: {unknown[0]} is not recorded in the registry"
            + (f" (and {len(unknown) - 1} more files)" if len(unknown) > 1 else "")
        )


def download_version(client: MlflowClient, name: str, version: str, cache: Path) -> Bundle:
    """A registered version into `cache/<name>/<version>`, whole or not at all.

    Safe for any number of threads and processes sharing `cache` (the workers of one server):
    one downloads under a file lock while the others wait, then find it complete. A version's
    folder appears by one rename of a complete staging folder, so its presence means complete;
    a folder left by a crash is a staging one, removed by the next download of any version.

    Everything goes through `client`, whose tracking and registry URIs the caller chose: never
    MLflow's process-global URI (which resolved `models:/` URIs against a stray ./mlflow.db).
    """
    version = str(version)
    target = cache / name / version
    if not (target / BUNDLE_FILE).is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(target.parent / f".{version}.lock"):
            if not (target / BUNDLE_FILE).is_file():
                _remove_leftovers(target.parent, version)  # ours to remove: we hold its lock
                staging = target.parent / f".{version}.{uuid.uuid4().hex}{STAGING_SUFFIX}"
                try:
                    _download(client, name, version, staging)
                    fsync_tree(staging)  # durable before the rename that makes it "complete"
                    shutil.rmtree(target, ignore_errors=True)  # not ours: no bundle.json in it
                    staging.rename(target)
                    fsync_dir(target.parent)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
    _remove_crashed_downloads(target.parent)
    return read_bundle(target)


def _remove_leftovers(folder: Path, version: str) -> None:
    """Staging folders of `version` that crashed downloads left (call with its lock held)."""
    for leftover in folder.glob(f".{version}.*{STAGING_SUFFIX}"):
        shutil.rmtree(leftover, ignore_errors=True)


def _remove_crashed_downloads(folder: Path) -> None:
    """Staging folders of any version whose lock is free: crashed downloads, which no later
    download of that version may come to clean. A version whose lock is held is being
    downloaded now, and its staging is left alone."""
    for version in sorted({p.name.split(".")[1] for p in folder.glob(f".*{STAGING_SUFFIX}")}):
        try:
            with FileLock(folder / f".{version}.lock", timeout=0):
                _remove_leftovers(folder, version)
        except Timeout:
            continue


def discard(bundle: Bundle) -> None:
    """Remove a downloaded copy (a refused version), so nothing reads it again."""
    shutil.rmtree(bundle.folder, ignore_errors=True)


def _download(client: MlflowClient, name: str, version: str, staging: Path) -> None:
    import mlflow.artifacts

    found = client.get_model_version(name, version)
    staging.mkdir(parents=True)
    model = mlflow.artifacts.download_artifacts(
        artifact_uri=client.get_model_version_download_uri(name, version),
        dst_path=str(staging / ".download"),
        tracking_uri=client.tracking_uri,
    )
    for item in Path(model).iterdir():  # the model's files at the bundle's root
        item.rename(staging / item.name)
    shutil.rmtree(staging / ".download")
    # from the run's artifact store itself: `runs:/` downloads swallow the cause of a failure
    # (a full disk, a cut connection) and report "ensure that the path is correct"
    run = client.get_run(str(found.run_id))
    mlflow.artifacts.download_artifacts(
        artifact_uri=f"{run.info.artifact_uri.rstrip('/')}/{CONTRACT}",
        dst_path=str(staging),
        tracking_uri=client.tracking_uri,
    )
    about = {"name": name, "version": version, "source": f"models:/{name}/{version}"}
    (staging / BUNDLE_FILE).write_text(json.dumps({**about, "run_id": found.run_id}))
