"""The API's edge: settings -> ServeConfig and model source -> the app.

Imports only the settings and `serving` (no CLI, no Dask, no torch), so the slim serving
image runs it directly with uvicorn.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from mlops.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

    from serving.config import ServeConfig
    from serving.manager import Source


def serve_config_of(settings: Settings, workers: int = 1) -> ServeConfig:
    from serving.config import ServeConfig

    serve = settings.serve
    return ServeConfig(
        max_batch=serve.max_batch,
        max_wait_ms=serve.max_wait_ms,
        max_request_rows=serve.max_request_rows,
        max_body_bytes=serve.max_body_bytes,
        threads=max(1, (os.cpu_count() or 1) // workers),  # workers x threads = the cores
        poll_interval_s=serve.poll_interval_s,
        admin_token=serve.admin_token.get_secret_value(),
        drift_window_rows=serve.drift_window_rows,
    )


def source_of(settings: Settings) -> Source:
    from serving.manager import FolderSource, RegistrySource

    if settings.serve.model_dir is not None:
        return FolderSource(settings.serve.model_dir)
    return RegistrySource(
        settings.gate.model_name,
        settings.gate.alias,
        settings.tracking_uri,
        settings.home / "serving" / "models",
    )


def create() -> FastAPI:
    """The app factory uvicorn's workers call (`mlops serve` passes settings by environment):
    `uvicorn mlops.serve_app:create --factory` is also what the serving image runs."""
    from serving.app import create_app

    settings = Settings()
    return create_app(serve_config_of(settings, settings.serve.workers), source_of(settings))
