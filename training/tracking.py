"""MLflow setup: a SQLite store and artifacts under MLOPS_HOME unless a tracking URI is given."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException


@dataclass(frozen=True)
class TrackingConfig:
    home: Path
    uri: str = ""  # MLFLOW_TRACKING_URI; empty means MLOPS_HOME/mlflow.db
    experiment: str = "flight-delay"

    @property
    def resolved_uri(self) -> str:
        return self.uri or f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @property
    def artifact_location(self) -> str | None:
        """Local artifacts for a database store; a tracking server keeps (or proxies) its own."""
        if self.resolved_uri.startswith(("http://", "https://", "databricks")):
            return None
        return (self.home / "mlartifacts").resolve().as_uri()


def use_tracking(config: TrackingConfig) -> str:
    """Point MLflow at the store and return the experiment id (created on first use)."""
    config.home.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(config.resolved_uri)
    experiment = mlflow.get_experiment_by_name(config.experiment)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow.create_experiment(
            config.experiment, artifact_location=config.artifact_location
        )
    except MlflowException:  # another process created it first
        experiment = mlflow.get_experiment_by_name(config.experiment)
        if experiment is None:
            raise
        return experiment.experiment_id
