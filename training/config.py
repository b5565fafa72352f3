"""The training side's configuration: the one place its defaults live.

`mlops.settings.Settings` uses these dataclasses as its sections (`MLOPS_FIT__EPOCHS=3` fills
`FitConfig.epochs`), so a CLI run and a library call train with the same defaults. The module
imports nothing heavy (MLflow only when a client is asked for): the serving image reads
the settings, and reaches the registry, without torch.

The model and fit defaults are the best trial of a 12-trial study on the bundled data
(benchmarks/RESULTS.md): an MLP on periodic embeddings of the numerical features; made a
TabM-mini ensemble of 8 members on values clipped to the training range, which took the test
ROC-AUC from 0.7464 to 0.7576 (mean of 3 seeds; benchmarks/RESULTS.md, "Frameworks").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal, get_args

from pydantic import Field

if TYPE_CHECKING:
    from mlflow import MlflowClient

PositiveInt = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0)]


@dataclass(frozen=True)
class ModelConfig:
    """The network's architecture (training/model.py); tuning searches over these."""

    numeric_embedding: Literal["none", "ple", "periodic"] = "periodic"
    numeric_dim: PositiveInt = 8  # per numerical feature, when embedded
    periodic_frequencies: PositiveInt = 8
    # the init scale of the periodic frequencies: the paper's key knob (Gorishniy et al. 2022)
    periodic_sigma: Annotated[float, Field(gt=0)] = 0.84
    categorical_dim: Annotated[int, Field(ge=2)] = 12  # a cap: small vocabularies get fewer
    backbone: Literal["mlp", "resnet"] = "mlp"
    width: Annotated[int, Field(ge=4)] = 128
    depth: PositiveInt = 3
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.22
    # numerical values held to the training range (training/model.py says why)
    clip_to_training: bool = True
    members: PositiveInt = 8  # above 1: a TabM-mini ensemble of this many members

    def as_params(self) -> dict[str, object]:
        return asdict(self)

    def categorical_width(self, cardinality: int) -> int:
        """A categorical column's embedding width: fastai's rule of thumb, capped."""
        return max(2, min(self.categorical_dim, round(1.6 * cardinality**0.56)))


@dataclass(frozen=True)
class FitConfig:
    epochs: PositiveInt = 12
    batch_size: PositiveInt = 2048
    learning_rate: Annotated[float, Field(gt=0)] = 8.6e-3
    weight_decay: Annotated[float, Field(ge=0)] = 1e-5
    patience: PositiveInt = 3  # epochs without a better validation loss before stopping
    seed: int = 0
    # the PyTorch network's training steps (JAX's are fp32): "auto" is bf16 autocast where the
    # device computes bf16 natively (CUDA with bf16; a CPU with AVX512-BF16 or AMX), else fp32
    precision: Literal["auto", "bf16", "fp32"] = "auto"

    def as_params(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class ValidationConfig:
    """Where every framework's validation rows come from: what early stopping, the study's
    trials, the trees' rounds and the decision threshold read (training/train.py,
    `held_out`).

    "random" trains on the labelled months (those before the test months) but a random
    `fraction` of their rows, and validates on those; "month" trains on the months before the
    feature build's validation months and validates on them; "auto" (the default) is "random"
    for the networks and "month" for the trees, each what measured best for it
    (benchmarks/RESULTS.md, "Model selection" and "Five frameworks"). A backtest one month
    earlier chose "random" for the network (3 seeds): October is unlike the months before it
    (delay rate 0.17 against 0.24), so early stopping on it stopped the network after 2 to 7
    epochs. The trees go the other way: stopped on random rows of the training distribution
    they boost 700 to 1,500 rounds and lose 0.011 (LightGBM) to 0.03 (CatBoost) test ROC-AUC.
    """

    split: Literal["auto", "random", "month"] = "auto"
    fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1  # of the labelled rows, when random
    seed: int = 0  # the draw of the held-out rows

    def resolved(self, framework: str) -> ValidationConfig:
        """The split `framework` validates on: "auto" made "random" or "month"."""
        if self.split != "auto":
            return self
        return replace(self, split="month" if framework in TREES else "random")

    def require_resolved(self) -> ValidationConfig:
        """Itself, once `resolved`: "auto" names no rows until a framework is known."""
        if self.split == "auto":
            raise ValueError("resolve an automatic validation split for its framework first")
        return self

    def as_params(self) -> dict[str, object]:
        if self.require_resolved().split == "month":
            return {"validation": "month"}
        return {"validation": "random", "validation_fraction": self.fraction}


# what can make a challenger (training/train.py): the network in PyTorch, JAX or TensorFlow
# (one `ModelConfig` and `FitConfig` for all three), or gradient-boosted trees (LightGBM or
# CatBoost, each with its own config below)
Framework = Literal["torch", "jax", "tf", "lightgbm", "catboost"]
NETWORKS: tuple[str, ...] = ("torch", "jax", "tf")
TREES: tuple[str, ...] = ("lightgbm", "catboost")
FRAMEWORKS: tuple[str, ...] = get_args(Framework)


@dataclass(frozen=True)
class LightGBMConfig:
    """Gradient-boosted trees (training/gbdt.py), the `lightgbm` framework. The defaults are
    a common starting point (and benchmarks/bench_training.py's untuned anchor); the number of
    rounds is chosen by early stopping on the validation months."""

    framework: ClassVar[str] = "lightgbm"
    rounds: PositiveInt = 2000  # at most
    early_stopping: PositiveInt = 50  # rounds without a better validation log loss
    learning_rate: Annotated[float, Field(gt=0)] = 0.05
    num_leaves: Annotated[int, Field(ge=2)] = 63
    min_child_samples: PositiveInt = 20
    feature_fraction: Annotated[float, Field(gt=0, le=1)] = 0.8
    bagging_fraction: Annotated[float, Field(gt=0, le=1)] = 0.8
    lambda_l2: Annotated[float, Field(ge=0)] = 0.0
    cat_smooth: Annotated[float, Field(ge=0)] = 10.0  # categorical splits' smoothing
    seed: int = 0
    threads: Annotated[int, Field(ge=0)] = 0  # 0: LightGBM's default, every core

    def as_params(self) -> dict[str, object]:
        return asdict(self)

    def as_lightgbm(self) -> dict[str, object]:
        """LightGBM's own parameters: deterministic for a seed, quiet."""
        return {
            "objective": "binary",
            "metric": "binary_logloss",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": 1 if self.bagging_fraction < 1 else 0,
            "lambda_l2": self.lambda_l2,
            "cat_smooth": self.cat_smooth,
            "seed": self.seed,
            "num_threads": self.threads,
            "deterministic": True,
            "force_row_wise": True,  # with `deterministic`: the same trees on every run
            "verbosity": -1,
        }


@dataclass(frozen=True)
class CatBoostConfig:
    """CatBoost's oblivious trees (training/gbdt.py), the `catboost` framework: CatBoost's own
    defaults but the learning rate, which it would otherwise pick from the data size; the
    number of rounds is chosen by early stopping on the validation months."""

    framework: ClassVar[str] = "catboost"
    rounds: PositiveInt = 2000  # at most
    early_stopping: PositiveInt = 50  # rounds without a better validation log loss
    learning_rate: Annotated[float, Field(gt=0)] = 0.08
    depth: Annotated[int, Field(ge=1, le=16)] = 6
    l2_leaf_reg: Annotated[float, Field(ge=0)] = 3.0
    random_strength: Annotated[float, Field(ge=0)] = 1.0  # noise on split scores
    bagging_temperature: Annotated[float, Field(ge=0)] = 1.0  # Bayesian bootstrap's
    border_count: Annotated[int, Field(ge=1, le=65535)] = 254  # bins per numerical feature
    seed: int = 0
    threads: Annotated[int, Field(ge=0)] = 0  # 0: every core

    def as_params(self) -> dict[str, object]:
        return asdict(self)

    def as_catboost(self) -> dict[str, object]:
        """CatBoost's own parameters: seeded, quiet, nothing written to the working folder."""
        return {
            "loss_function": "Logloss",
            "iterations": self.rounds,
            "learning_rate": self.learning_rate,
            "depth": self.depth,
            "l2_leaf_reg": self.l2_leaf_reg,
            "random_strength": self.random_strength,
            "bagging_temperature": self.bagging_temperature,
            "border_count": self.border_count,
            "random_seed": self.seed,
            "thread_count": self.threads or -1,
            "od_type": "Iter",
            "od_wait": self.early_stopping,
            "use_best_model": True,
            "allow_writing_files": False,
            "verbose": False,
        }


TreesConfig = LightGBMConfig | CatBoostConfig


def trees_config(framework: str) -> TreesConfig:
    """A trees framework's default config."""
    return {"lightgbm": LightGBMConfig, "catboost": CatBoostConfig}[framework]()


@dataclass(frozen=True)
class TuneConfig:
    """The Optuna study (training/tune.py); `mlops run` uses these as its small budget."""

    trials: PositiveInt = 6  # the study's budget of finished (complete or pruned) trials
    epochs: PositiveInt = 3  # the most epochs a trial trains: Hyperband's maximum resource
    # the share of the training rows a network's trial trains on (one seeded draw for the
    # whole study; the validation rows stay whole, so trials are compared on the same rows): a
    # ranking of configurations needs less data than the champion it picks, which trains on
    # every row. 1 for a study on the full table. The trees' trials boost on every row: their
    # leaf sizes are counts of rows, so a sample would tune them for a smaller table.
    sample: Annotated[float, Field(gt=0, le=1)] = 0.3
    pruner: Literal["hyperband", "successive_halving", "none"] = "hyperband"
    study: str = "flight-delay"
    framework: Framework = "torch"  # whose space the study searches (one framework per study)
    storage: str = ""  # an SQLAlchemy URL; empty means sqlite under MLOPS_HOME
    workers: PositiveInt = 1  # processes started by one command, each running trials
    heartbeat_interval: PositiveInt = 10  # seconds between a running trial's heartbeats
    grace_period: Annotated[int, Field(ge=2)] = 30  # seconds of silence: the trial is dead
    outage_patience_s: PositiveFloat = 300  # how long a worker waits for its database to return
    seed: int = 0

    def storage_url(self, home: Path) -> str:
        return self.storage or f"sqlite:///{(home / 'optuna.db').resolve()}"

    @property
    def train_share(self) -> float:
        """The share of the training rows this study's trials train on."""
        return 1.0 if self.framework in TREES else self.sample


@dataclass(frozen=True)
class GateConfig:
    """The registry and the promotion gate (training/registry.py)."""

    model_name: str = "flight-delay"
    alias: str = "champion"
    min_auc_gain: float = 0.0  # the challenger must beat the champion's ROC-AUC by more than this


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow's store: a database under MLOPS_HOME unless a URI is given."""

    home: Path
    uri: str = ""  # MLFLOW_TRACKING_URI; empty means MLOPS_HOME/mlflow.db
    experiment: str = "flight-delay"
    registry_uri: str = ""  # MLFLOW_REGISTRY_URI; empty means the tracking store

    @property
    def resolved_uri(self) -> str:
        return self.uri or f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @property
    def resolved_registry_uri(self) -> str:
        return self.registry_uri or self.resolved_uri

    @property
    def artifact_location(self) -> str | None:
        """Local artifacts for a database store; a tracking server keeps (or proxies) its own."""
        if self.resolved_uri.startswith(("http://", "https://", "databricks")):
            return None
        return (self.home / "mlartifacts").resolve().as_uri()

    def client(self) -> MlflowClient:
        """The one way to reach the store: tracking and registry URIs both given, never
        MLflow's process-global ones (training/tracking.py says why)."""
        from mlflow import MlflowClient

        if not self.uri:
            self.home.mkdir(parents=True, exist_ok=True)
        return MlflowClient(tracking_uri=self.resolved_uri, registry_uri=self.resolved_registry_uri)
