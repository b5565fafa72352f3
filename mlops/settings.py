"""Settings, read once at the edge (the CLI callback) and passed down as typed pieces."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class DaskSettings(BaseModel):
    n_workers: int = Field(2, ge=1, description="LocalCluster worker processes")
    threads_per_worker: int = Field(1, ge=1)
    processes: bool = True
    memory_limit: str = "auto"
    dashboard_address: str | None = None


class FeatureSettings(BaseModel):
    valid_start: str = Field("2013-10", pattern=r"^\d{4}-\d{2}$")
    test_start: str = Field("2013-11", pattern=r"^\d{4}-\d{2}$")
    min_category_count: int = Field(10, ge=1, description="rarer categories go to the OOV bucket")


class ModelSettings(BaseModel):
    """The network's architecture (see training/model.py); tuning searches over these.

    The defaults are the best trial of a 12-trial study on the bundled data (RESULTS.md)."""

    numeric_embedding: Literal["none", "ple", "periodic"] = "periodic"
    numeric_dim: int = Field(8, ge=1)
    periodic_sigma: float = Field(0.84, gt=0, description="init scale of periodic frequencies")
    categorical_dim: int = Field(12, ge=2)
    backbone: Literal["mlp", "resnet"] = "mlp"
    width: int = Field(128, ge=4)
    depth: int = Field(3, ge=1)
    dropout: float = Field(0.22, ge=0, lt=1)


class FitSettings(BaseModel):
    epochs: int = Field(12, ge=1)
    batch_size: int = Field(2048, ge=1)
    learning_rate: float = Field(8.6e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    patience: int = Field(3, ge=1)
    seed: int = 0


class TuneSettings(BaseModel):
    """The Optuna study (see training/tune.py); `mlops run` uses these as its small budget."""

    trials: int = Field(6, ge=1, description="finished trials the study aims for")
    epochs: int = Field(3, ge=1, description="the most epochs per trial (Hyperband's resource)")
    pruner: Literal["hyperband", "successive_halving", "none"] = "hyperband"
    study: str = "flight-delay"
    workers: int = Field(1, ge=1, description="tuning processes started by one command")
    heartbeat_interval: int = Field(10, ge=1, description="seconds between trial heartbeats")
    grace_period: int = Field(30, ge=2, description="seconds of silence before a trial is dead")
    seed: int = 0


class GateSettings(BaseModel):
    """The registry and the promotion gate (see training/registry.py)."""

    model_name: str = "flight-delay"
    alias: str = "champion"
    min_auc_gain: float = Field(0.0, description="ROC-AUC gain a challenger needs to promote")


class ServeSettings(BaseModel):
    """The API (see serving/config.py); the model is the registry's champion unless
    `model_dir` names a local model folder (what `mlops export` writes)."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, description="uvicorn worker processes")
    model_dir: Path | None = None
    max_batch: int = Field(256, ge=1, description="rows per onnxruntime call")
    max_wait_ms: float = Field(0.0, ge=0, description="extra wait for a batch to fill")
    max_request_rows: int = Field(10_000, ge=1)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    poll_interval_s: float = Field(30.0, ge=0, description="0: reload on /admin/reload only")
    admin_token: SecretStr = Field(SecretStr(""), description="empty disables /admin/*")
    drift_window_rows: int = Field(10_000, ge=100)

    @field_validator("model_dir", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value


class Settings(BaseSettings):
    """Every setting has an embedded default; `MLOPS_<NAME>` (and `__` for nesting) overrides."""

    model_config = SettingsConfigDict(
        env_prefix="MLOPS_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    home: Path = Path(".mlops")
    dask_scheduler: str = Field("", description="tcp://host:8786; empty starts a LocalCluster")
    dask: DaskSettings = Field(default_factory=DaskSettings)
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    fit: FitSettings = Field(default_factory=FitSettings)
    tune: TuneSettings = Field(default_factory=TuneSettings)
    gate: GateSettings = Field(default_factory=GateSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    optuna_storage: str = Field(
        "", description="an SQLAlchemy URL (postgresql://...); empty: MLOPS_HOME/optuna.db"
    )
    mlflow_tracking_uri: str = Field(
        "",
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "MLOPS_MLFLOW_TRACKING_URI"),
        description="empty: MLOPS_HOME/mlflow.db with artifacts in MLOPS_HOME/mlartifacts",
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

    @property
    def tracking_uri(self) -> str:
        """MLflow's store: the configured URI, else the SQLite file under home."""
        return self.mlflow_tracking_uri or f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @field_validator("dask_scheduler")
    @classmethod
    def _scheduler_address(cls, value: str) -> str:
        if value and "://" not in value:
            raise ValueError(
                f"MLOPS_DASK_SCHEDULER must be an address like tcp://host:8786, got {value!r}"
            )
        return value
