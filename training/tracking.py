"""MLflow setup for the embedded defaults: a SQLite store and artifacts under MLOPS_HOME."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow


@dataclass(frozen=True)
class TrackingConfig:
    home: Path
    uri: str = ""  # MLFLOW_TRACKING_URI; empty means MLOPS_HOME/mlflow.db
    experiment: str = "flight-delay"

    @property
    def resolved_uri(self) -> str:
        return self.uri or f"sqlite:///{(self.home / 'mlflow.db').resolve()}"


def use_tracking(config: TrackingConfig) -> str:
    """Point MLflow at the store and return the experiment id (created on first use)."""
    config.home.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(config.resolved_uri)
    experiment = mlflow.get_experiment_by_name(config.experiment)
    if experiment is not None:
        return experiment.experiment_id
    # With a local store the artifacts stay under MLOPS_HOME; a tracking server proxies its own.
    location = None if config.uri else (config.home / "mlartifacts").resolve().as_uri()
    return mlflow.create_experiment(config.experiment, artifact_location=location)
