"""A registered model out of the registry: into the local cache, or as a model folder."""

from __future__ import annotations

import shutil
from pathlib import Path

from mlops.configs import mlflow_client, tracking_of
from mlops.settings import Settings
from pipelines.errors import NoDataError
from pipelines.storage import recover_target, staging_for, swap_in
from serving.bundle import Bundle, download_version, verify


def registered_bundle(settings: Settings, version: str | None = None) -> Bundle:
    """A version (default: the alias's) downloaded whole and checked against its sha256s."""
    from mlflow.exceptions import MlflowException

    gate = settings.gate
    client = mlflow_client(settings)
    try:
        found = (
            client.get_model_version(gate.model_name, version)
            if version
            else client.get_model_version_by_alias(gate.model_name, gate.alias)
        )
    except MlflowException as error:
        what = f"version {version}" if version else f"a {gate.alias!r}"
        raise NoDataError(
            f"model {gate.model_name!r} has no {what} in {tracking_of(settings).resolved_uri}: "
            "run `mlops run` (or `mlops train` and `mlops promote`) first"
        ) from error
    bundle = download_version(
        client, gate.model_name, str(found.version), settings.home / "serving" / "models"
    )
    verify(bundle)
    return bundle


def export_model(settings: Settings, output: Path, version: str | None = None) -> Bundle:
    """The model folder `mlops serve --model-dir` takes. It replaces `output` whole: a crash
    leaves the old folder or the new one (or, between two renames where the OS cannot
    exchange folders, none), and this export's own leftovers are cleaned by the next."""
    bundle = registered_bundle(settings, version)
    recover_target(output)
    staging = staging_for(output)
    try:
        shutil.copytree(bundle.folder, staging)
        swap_in(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return bundle
