"""The API's edge: settings -> the app, in every process that serves.

`uvicorn mlops.serve_app:create --factory` is what the serving image runs and what each worker
of `mlops serve --workers N` calls (`mlops serve` hands its settings over by environment).
Imports the settings and `serving` only: no CLI, no Dask, no torch.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from mlops.configs import events_of, model_source, predictions_of
from mlops.logs import service_logging
from mlops.settings import Settings, secrets_from_files

if TYPE_CHECKING:
    from fastapi import FastAPI


def create() -> FastAPI:
    secrets_from_files()
    settings = Settings()
    service_logging(settings)  # first: the libraries read their switches when imported
    from serving.app import create_app  # imports onnxruntime

    os.environ.update(settings.serve.mlflow_environment())  # this process serves, only
    return create_app(
        settings.serve, model_source(settings), events_of(settings), predictions_of(settings)
    )
