"""MLflow setup: a SQLite store and artifacts under MLOPS_HOME unless a tracking URI is given."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

# MLflow 3's UI shows an experiment either for model training (runs, models) or for GenAI
# (an overview of traces). The experiment's kind is this tag, with the value the UI's own kind
# selector writes for "Machine learning". MLflow 3.17's UI still opens an experiment in the
# browser's remembered mode (GenAI on a first visit) unless the address names one, as
# `experiment_page` does; newer MLflow source switches the mode to the tag's kind.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
DESCRIPTION_TAG = "mlflow.note.content"  # what the UI shows (and edits) as a description
MODEL_TRAINING = "custom_model_development"
EXPERIMENT_TAGS = {
    EXPERIMENT_KIND_TAG: MODEL_TRAINING,
    DESCRIPTION_TAG: (
        "Training runs of the flight delay network, each named for its training months and "
        "architecture (`train 2013-01..2013-09 mlp+periodic`) and described by its model card; "
        "a retrain's run names the month it takes in. An Optuna study is one `tune-<study>` run "
        "with a nested `trial-N` run per trial. The registry holds the versions; the "
        "`champion` alias marks the one served."
    ),
}


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
        _tag_experiment(config, experiment.experiment_id, experiment.tags)
        return experiment.experiment_id
    try:
        return mlflow.create_experiment(
            config.experiment, artifact_location=config.artifact_location, tags=EXPERIMENT_TAGS
        )
    except MlflowException:  # another process created it first
        experiment = mlflow.get_experiment_by_name(config.experiment)
        if experiment is None:
            raise
        return experiment.experiment_id


def _tag_experiment(config: TrackingConfig, experiment_id: str, tags: dict[str, str]) -> None:
    """Give an experiment made before these tags existed its kind and description, keeping
    any a user has set (in the UI, say)."""
    client = MlflowClient(config.resolved_uri)
    for key, value in EXPERIMENT_TAGS.items():
        if key not in tags:
            client.set_experiment_tag(experiment_id, key, value)


def experiment_page(server: str, experiment_id: str) -> str:
    """The experiment's runs in the UI at `server` (e.g. http://127.0.0.1:5000), in the
    model training view even on a browser's first visit."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"
