"""Settings -> what each stage takes: the one place conversions live.

Most sections already are the library configs; these add what comes from several settings
(the cluster's scheduler address, the store's URIs) and the one way to reach MLflow.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import replace
from typing import TYPE_CHECKING

from mlops.settings import Settings
from pipelines.cluster import ClusterConfig
from pipelines.errors import RegistryUnavailableError
from pipelines.layout import DataLayout
from pipelines.redact import redact
from pipelines.splits import SplitPlan
from serving.config import EventsConfig, PredictionLogConfig
from training.config import TrackingConfig, TuneConfig

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from serving.manager import Source

REACHABLE_TIMEOUT_S = 5.0


def layout_of(settings: Settings) -> DataLayout:
    return DataLayout(settings.home)


def events_of(settings: Settings) -> EventsConfig:
    """The events' settings, their folder (the local log, the quarantine) under MLOPS_HOME."""
    events = settings.events
    return events if events.folder else replace(events, folder=settings.home / "events")


def predictions_of(settings: Settings) -> PredictionLogConfig:
    """The prediction log's settings, its folders (the predictions, the outcomes) in the
    offline store under MLOPS_HOME unless set."""
    log, layout = settings.predictions, layout_of(settings)
    return replace(
        log,
        folder=log.folder or layout.predictions,
        outcomes=log.outcomes or layout.outcomes,
    )


def cluster_of(settings: Settings) -> ClusterConfig:
    return replace(settings.dask, scheduler=settings.dask_scheduler)


def plan_of(settings: Settings) -> SplitPlan:
    return SplitPlan(settings.features.valid_start, settings.features.test_start)


def tune_of(settings: Settings, **overrides: object) -> TuneConfig:
    """The study's config: MLOPS_OPTUNA_STORAGE, then the options a command was given."""
    given = {name: value for name, value in overrides.items() if value is not None}
    framework = given.pop("framework", settings.tune.framework)
    config = replace(settings.tune, storage=settings.optuna_storage, **given)
    return for_framework(config, str(framework), keep_study="study" in given)


def for_framework(config: TuneConfig, framework: str, keep_study: bool = False) -> TuneConfig:
    """`config`'s budget for `framework`: a framework other than the network's searches in a
    study of its own (`flight-delay-lightgbm`) unless one is named."""
    if framework == config.framework:
        return config
    own = keep_study or framework == "torch"
    study = config.study if own else f"{config.study}-{framework}"
    return replace(config, framework=framework, study=study)


def tracking_of(settings: Settings) -> TrackingConfig:
    return TrackingConfig(
        settings.home,
        settings.mlflow_tracking_uri,
        settings.experiment,
        settings.mlflow_registry_uri,
    )


def require_reachable(uri: str) -> None:
    """Fail in seconds, naming the server, instead of after MLflow's minutes of retries."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=REACHABLE_TIMEOUT_S):
            return
    except urllib.error.HTTPError:
        return  # it answered (an auth proxy may refuse /health): reachable
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise RegistryUnavailableError(
            f"MLflow at {redact(uri)} is unreachable: {reason}"
        ) from error


def require_store(settings: Settings) -> TrackingConfig:
    """The store, checked to answer (a server's URIs; a local database needs no check)."""
    tracking = tracking_of(settings)
    for address in {tracking.resolved_uri, tracking.resolved_registry_uri}:
        require_reachable(address)
    return tracking


def mlflow_client(settings: Settings) -> MlflowClient:
    """The store's client for a command: one that fails now if MLflow does not answer."""
    return require_store(settings).client()


def model_source(settings: Settings) -> Source:
    """What the server serves: a local model folder, or the registry's alias. MLflow is not
    probed here: a server starts (live, not ready) while the registry is down."""
    from serving.manager import FolderSource, RegistrySource

    if settings.serve.model_dir is not None:
        return FolderSource(settings.serve.model_dir)
    tracking = tracking_of(settings)
    return RegistrySource(
        settings.gate.model_name,
        settings.gate.alias,
        tracking.resolved_uri,
        tracking.resolved_registry_uri,
        settings.home / "serving" / "models",
    )
