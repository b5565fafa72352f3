"""MLflow's store, passed explicitly: a client bound to one tracking and registry URI.

MLflow keeps a process-global tracking URI (and exports it as MLFLOW_TRACKING_URI) that its
client, registry helpers and fluent API fall back to. Everything here takes the store as an
argument instead: `TrackingConfig.client()` is an `MlflowClient` with both URIs, and the fluent API
(`mlflow.start_run`, `mlflow.log_*`, `mlflow.onnx.log_model`), which has no such argument, is
pointed at the store only for the duration of one tracked run (`fluent_tracking`), then put
back, so nothing a later call does depends on which call came first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.data.pandas_dataset import PandasDataset
from mlflow.environment_variables import MLFLOW_TRACKING_URI
from mlflow.exceptions import MlflowException
from mlflow.tracking._tracking_service import utils as tracking_utils

from training.config import TrackingConfig

if TYPE_CHECKING:
    from mlflow.data.dataset_source import DatasetSource
    from mlflow.types import Schema

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


def experiment_id(client: MlflowClient, config: TrackingConfig) -> str:
    """The experiment's id, created on first use."""
    experiment = client.get_experiment_by_name(config.experiment)
    if experiment is not None:
        _tag_experiment(client, experiment.experiment_id, experiment.tags)
        return experiment.experiment_id
    try:
        return client.create_experiment(
            config.experiment, artifact_location=config.artifact_location, tags=EXPERIMENT_TAGS
        )
    except MlflowException:  # another process created it first
        experiment = client.get_experiment_by_name(config.experiment)
        if experiment is None:
            raise
        return experiment.experiment_id


@contextmanager
def fluent_tracking(config: TrackingConfig) -> Iterator[str]:
    """MLflow's fluent API aimed at the store for one tracked run; yields the experiment id.

    `mlflow.set_tracking_uri` sets a module global and exports MLFLOW_TRACKING_URI; both are put
    back exactly as they were, each on its own: restoring the global from `get_tracking_uri()`
    would turn a URI the environment named into a global that outlives the environment, and
    whatever runs later in this process (another store's run, a spawned tuning worker or
    torchrun rank) would be aimed at it. The registry is never reached this way (registering
    goes through `TrackingConfig.client`), so its global URI is left alone.
    """
    client = config.client()
    found = experiment_id(client, config)
    global_before = tracking_utils._tracking_uri  # MLflow has no public getter for the raw value
    exported_before = MLFLOW_TRACKING_URI.get_raw()
    mlflow.set_tracking_uri(config.resolved_uri)
    try:
        yield found
    finally:
        mlflow.set_tracking_uri(global_before)  # None unsets the global and the export
        if exported_before is None:
            MLFLOW_TRACKING_URI.unset()
        else:
            MLFLOW_TRACKING_URI.set(exported_before)


def local_dataset_source(path: Path) -> DatasetSource:
    """A folder as a dataset's source. MLflow registers its local-file source twice (for paths
    and for file:// URIs, one class each) and warns, for every dataset given a path, that it
    "can be interpreted in multiple ways"; resolving among one of the two gives the same
    source without the ambiguity."""
    from mlflow.data.dataset_source_registry import get_registered_sources, resolve_dataset_source

    local = [s for s in get_registered_sources() if s.__name__ == "LocalArtifactDatasetSource"]
    return resolve_dataset_source(str(path), candidate_sources=local[:1])


class TableDataset(PandasDataset):
    """A table as an MLflow dataset, described at pandas' speed. Its digest hashes every row
    (`pandas_digest`). Its column types are inferred from the first rows, which type every row
    of columns typed as these are (numbers, pandas strings, datetimes), and a column is
    optional where any row lacks it. MLflow's own inference reads every value (6 s for the
    training split) and its digest maps Python's `type` over every cell (2 s) to hash the
    first 10,000 rows."""

    SCHEMA_ROWS = 1_000

    def __init__(self, table: pd.DataFrame, source: DatasetSource, name: str, targets: str):
        super().__init__(table, source, targets, name, digest=pandas_digest(table))

    @cached_property
    def schema(self) -> Schema | None:
        from mlflow.types import ColSpec, Schema

        missing = self.df.isna().any()
        inferred = mlflow.models.infer_signature(self.df.head(self.SCHEMA_ROWS)).inputs
        return Schema(
            [
                ColSpec(column.type, column.name, required=not missing[column.name])
                for column in inferred.inputs
            ]
        )


def pandas_digest(table: pd.DataFrame) -> str:
    """A fingerprint of every row and of the column names (MLflow's digests are 8 hex)."""
    digest = hashlib.md5(usedforsecurity=False)
    digest.update(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes())
    digest.update("\0".join(map(str, table.columns)).encode())
    return digest.hexdigest()[:8]


def _tag_experiment(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> None:
    """Give an experiment made before these tags existed its kind and description, keeping
    any a user has set (in the UI, say)."""
    for key, value in EXPERIMENT_TAGS.items():
        if key not in tags:
            client.set_experiment_tag(experiment_id, key, value)


def experiment_page(server: str, experiment_id: str) -> str:
    """The experiment's runs in the UI at `server` (e.g. http://127.0.0.1:5000), in the
    model training view even on a browser's first visit."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"
