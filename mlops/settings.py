"""Settings, read once at the edge (the CLI callback, the app factory) and passed down.

The sections are the libraries' own config dataclasses, so each default lives in one place:
`MLOPS_FIT__EPOCHS=3` fills `training.config.FitConfig.epochs`, `MLOPS_SERVE__MAX_BATCH=64`
fills `serving.config.ServeConfig.max_batch`. `mlops.configs` turns settings into what each
stage takes. Nothing here imports torch, Dask or MLflow: the serving image reads it too.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipelines.cluster import ClusterConfig
from pipelines.spec import MIN_CATEGORY_COUNT
from pipelines.splits import SplitPlan
from serving.config import EventsConfig, PredictionLogConfig, ServeConfig
from training.config import (
    CatBoostConfig,
    FitConfig,
    GateConfig,
    LightGBMConfig,
    ModelConfig,
    TreesConfig,
    TuneConfig,
    ValidationConfig,
)

# Values that are placeholders, not secrets: refused at startup rather than served with.
PLACEHOLDER_SECRETS = frozenset({"change-me", "changeme", "changethis", "secret", "password"})
# Settings that carry a credential, and so may come from a file: NAME_FILE=/run/secrets/...
# (Docker's convention; the compose stack's services read theirs so, see infra/README.md).
SECRET_VARIABLES = (
    "MLFLOW_TRACKING_PASSWORD",
    "MLOPS_OPTUNA_STORAGE",
    "MLOPS_LOCK_URL",
    "MLOPS_SERVE__ADMIN_TOKEN",
    "MLOPS_EVENTS__TOKEN",
    "MLOPS_EVENTS__STREAM_URL",
)


def secrets_from_files(environ: MutableMapping[str, str] = os.environ) -> None:
    """NAME_FILE=/path sets NAME to the file's content unless NAME is set (edge only: the CLI
    callback and the app factory). In the environment, not only in Settings: MLflow's client
    reads MLFLOW_TRACKING_PASSWORD itself, and `mlops serve`'s workers inherit it. Reading the
    file here, not in an entrypoint, keeps `docker compose exec <service> mlops ...` working."""
    for name in SECRET_VARIABLES:
        path = environ.get(f"{name}_FILE")
        if path and not environ.get(name):
            environ[name] = Path(path).read_text().strip()


class ScheduleConfig(BaseModel):
    """`mlops schedule` (mlops/scheduler.py): `MLOPS_SCHEDULE__WEBHOOK_TOKEN=...` fills it."""

    # the bearer token Alertmanager sends to POST /v1/alerts; empty: the webhook is off
    webhook_token: str = Field("", repr=False)
    host: str = "127.0.0.1"  # /metrics and the webhook; beyond this machine only by choice
    port: Annotated[int, Field(ge=0, le=65535)] = 8001  # 0: no HTTP server (the cron only)
    # an alert starts no retrain this soon after the last one an alert started
    alert_cooldown_s: Annotated[float, Field(ge=0)] = 6 * 3600.0
    # a tick waits this long for the data lock: a sink's batch holds it for a moment (a live
    # stream keeps it busy), another retrain for minutes (the tick is skipped then)
    lock_wait_s: Annotated[float, Field(ge=0)] = 120.0
    # `mlops monitor` on this crontab (the prediction log's realized quality into MLflow, a
    # run per served version); empty: never
    monitor_cron: str = "0 * * * *"


class SinkConfig(BaseModel):
    """`mlops sink --follow` (mlops/flows/sink.py): `MLOPS_SINK__PORT=8002` serves its /metrics."""

    host: str = "127.0.0.1"  # beyond this machine only by choice
    port: int = Field(0, ge=0, le=65535)  # 0: no /metrics


class FeatureSettings(BaseModel):
    """The split (pipelines/splits.py) and the vocabularies' cut-off (pipelines/spec.py)."""

    valid_start: str = Field(SplitPlan.valid_start, pattern=r"^\d{4}-\d{2}$")
    test_start: str = Field(SplitPlan.test_start, pattern=r"^\d{4}-\d{2}$")
    min_category_count: int = Field(
        MIN_CATEGORY_COUNT, ge=1, description="rarer categories go to the OOV bucket"
    )


class Settings(BaseSettings):
    """Every setting has an embedded default; `MLOPS_<NAME>` (and `__` for nesting) overrides."""

    model_config = SettingsConfigDict(
        env_prefix="MLOPS_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    home: Path = Path(".mlops")
    dask_scheduler: str = Field("", description="tcp://host:8786; empty starts a LocalCluster")
    dask: ClusterConfig = Field(default_factory=ClusterConfig)
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    model: ModelConfig = Field(default_factory=ModelConfig)
    fit: FitConfig = Field(default_factory=FitConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    lightgbm: LightGBMConfig = Field(default_factory=LightGBMConfig)
    catboost: CatBoostConfig = Field(default_factory=CatBoostConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    predictions: PredictionLogConfig = Field(default_factory=PredictionLogConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    sink: SinkConfig = Field(default_factory=SinkConfig)
    optuna_storage: str = Field(
        "", description="an SQLAlchemy URL (postgresql://...); empty: MLOPS_HOME/optuna.db"
    )
    mlflow_tracking_uri: str = Field(
        "",
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "MLOPS_MLFLOW_TRACKING_URI"),
        description="empty: MLOPS_HOME/mlflow.db with artifacts in MLOPS_HOME/mlartifacts",
    )
    mlflow_registry_uri: str = Field(
        "",
        validation_alias=AliasChoices("MLFLOW_REGISTRY_URI", "MLOPS_MLFLOW_REGISTRY_URI"),
        description="empty: the tracking store",
    )
    # Read only to refuse a placeholder: MLflow's client reads it from the environment itself.
    mlflow_tracking_password: SecretStr = Field(
        SecretStr(""), validation_alias=AliasChoices("MLFLOW_TRACKING_PASSWORD")
    )
    experiment: str = "flight-delay"
    retrain_cron: str = Field(
        "0 * * * *",
        validation_alias=AliasChoices("RETRAIN_CRON", "MLOPS_RETRAIN_CRON"),
        description="when `mlops schedule` retrains (crontab syntax)",
    )
    lock_url: str = Field(
        "", description="postgresql://... for an advisory lock; empty: a file lock in home"
    )
    lock_wait_s: float = Field(
        1800, ge=0, description="how long a writer waits for another one's data lock (0: not)"
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="json: one JSON object per line (containers)"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    def trees(self, framework: str) -> TreesConfig:
        """The section of a trees framework (`lightgbm`, `catboost`): each is named after it."""
        config = getattr(self, framework)
        assert config.framework == framework
        return config

    @field_validator("dask_scheduler")
    @classmethod
    def _scheduler_address(cls, value: str) -> str:
        if value and "://" not in value:
            raise ValueError(
                f"MLOPS_DASK_SCHEDULER must be an address like tcp://host:8786, got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _one_name_each(self) -> Settings:
        """The scheduler's address and the study's storage are named by DESIGN.md's variables;
        their sections' fields of the same meaning would be a second name for each."""
        for variable, value, name in (
            ("MLOPS_DASK__SCHEDULER", self.dask.scheduler, "MLOPS_DASK_SCHEDULER"),
            ("MLOPS_TUNE__STORAGE", self.tune.storage, "MLOPS_OPTUNA_STORAGE"),
        ):
            if value:
                raise ValueError(f"{variable} is not read: set {name} instead")
        return self

    @model_validator(mode="after")
    def _no_placeholder_secrets(self) -> Settings:
        """A copied example value is not a secret (full-stack-fastapi-template does the same)."""
        secrets = {
            "MLOPS_SERVE__ADMIN_TOKEN": self.serve.admin_token,
            "MLOPS_EVENTS__TOKEN": self.events.token,
            "MLFLOW_TRACKING_PASSWORD": self.mlflow_tracking_password.get_secret_value(),
        }
        for variable, value in secrets.items():
            if value.strip().lower() in PLACEHOLDER_SECRETS:
                raise ValueError(
                    f"{variable} is {value!r}, a placeholder: set a real secret "
                    "(for example `openssl rand -hex 32`), or leave it empty to disable it"
                )
        return self
