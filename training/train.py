"""One training run of any framework, tracked in MLflow: data, model, fit, test-month figures.

`train` fits the PyTorch network, `train_ported` the same network in JAX or TensorFlow
(`train_jax`, `train_tf`), `train_trees` gradient-boosted trees (LightGBM or CatBoost); each
hands its fitted model (a `training.export.Candidate`) to the same tracked run, which scores
it, exports it to ONNX with a parity check, draws its plots and logs it on the one contract,
so the gate and the server never need to know which framework made it.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
import pandas as pd
from pandas.api.types import is_integer_dtype

from pipelines.layout import SPLITS, DataLayout
from pipelines.metrics import log_loss, roc_auc
from pipelines.spec import LABEL, Encoded, FeatureSpec, Part, encode, part_of, psi_bins
from pipelines.storage import read_parquet_folder
from training import plots
from training.bundle import LoggedModel, decision_threshold, log_onnx_model
from training.config import (
    FitConfig,
    ModelConfig,
    TrackingConfig,
    TreesConfig,
    ValidationConfig,
)
from training.export import Candidate, predict_onnx, session
from training.importance import Predict, permutation_importance
from training.model_card import model_card, run_name
from training.tracking import (
    DESCRIPTION_TAG,
    TableDataset,
    fluent_tracking,
    local_dataset_source,
)

if TYPE_CHECKING:
    from training.fit import EpochResult, FitResult, OnEpoch
    from training.gbdt import OnRound

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    experiment_id: str
    framework: str
    metrics: dict[str, float]
    model: LoggedModel
    train_loss: list[float]  # per epoch or round: the learning curves
    valid_loss: list[float]


@dataclass(frozen=True)
class Fitted:
    """What a framework's fit hands the tracked run."""

    candidate: Candidate
    metrics: dict[str, float]  # best_valid_loss and where it was reached (best_epoch, ...)
    train_loss: list[float]  # per epoch or round: the learning curves
    valid_loss: list[float]
    step: str  # "epoch" or "round"


DEFAULT_VALIDATION = ValidationConfig()


def load_splits(layout: DataLayout, validation: ValidationConfig) -> dict[str, pd.DataFrame]:
    """The feature table's train, valid and test rows, the validation rows as `validation`
    draws them (`held_out`)."""
    tables = {split: read_parquet_folder(layout.split(split)) for split in SPLITS}
    return held_out(tables, validation)


def held_out(
    tables: dict[str, pd.DataFrame], validation: ValidationConfig
) -> dict[str, pd.DataFrame]:
    """The build's time split as is ("month"), or ("random") the labelled months' rows, train
    and valid together, with a seeded random `fraction` of them held out to validate on. The
    test months are never touched: the gate scores every model on them alone."""
    if validation.require_resolved().split == "month":
        return tables
    labelled = pd.concat([tables["train"], tables["valid"]], ignore_index=True)
    held = _seeded_share(len(labelled), validation.fraction, validation.seed)
    return {
        "train": labelled[~held].reset_index(drop=True),
        "valid": labelled[held].reset_index(drop=True),
        "test": tables["test"],
    }


def sampled(table: pd.DataFrame, share: float, seed: int) -> pd.DataFrame:
    """A seeded random `share` of the table's rows, in their order (all of them at 1)."""
    if share >= 1:
        return table
    return table[_seeded_share(len(table), share, seed)].reset_index(drop=True)


def _seeded_share(rows: int, share: float, seed: int) -> np.ndarray:
    """A mask picking about `share` of `rows`, the same for the same seed."""
    return np.random.default_rng(seed).random(rows) < share


def split_months(spec: FeatureSpec, validation: ValidationConfig) -> dict[str, list[str]]:
    """The months each split's rows come from under `validation`."""
    months = {split: list(summary.months) for split, summary in spec.splits.items()}
    if validation.split == "random":
        labelled = sorted(set(months.get("train", [])) | set(months.get("valid", [])))
        months["train"] = months["valid"] = labelled
    return months


@dataclass(frozen=True)
class TrainingData:
    """What every framework's run reads: one pinned feature build, its spec, the splits as
    `validation` draws them and their encoded inputs."""

    layout: DataLayout
    spec: FeatureSpec
    validation: ValidationConfig
    tables: dict[str, pd.DataFrame]
    encoded: dict[str, Encoded]

    @classmethod
    def load(cls, layout: DataLayout, validation: ValidationConfig) -> TrainingData:
        layout = layout.pinned()  # a build published meanwhile must not mix into the reads
        spec = FeatureSpec.load(layout.spec)
        tables = load_splits(layout, validation)
        encoded = {split: encode(table, spec) for split, table in tables.items()}
        return cls(layout, spec, validation, tables, encoded)

    @property
    def months(self) -> dict[str, list[str]]:
        return split_months(self.spec, self.validation)

    def part(self, split: str) -> Part:
        return part_of(self.tables[split], self.spec, self.encoded[split])


def train(
    layout: DataLayout,
    tracking: TrackingConfig,
    model_config: ModelConfig,
    fit_config: FitConfig,
    on_epoch: OnEpoch | None = None,
    name_prefix: str = "train",
    validation: ValidationConfig = DEFAULT_VALIDATION,
) -> TrainResult | None:
    """The network: fit on the training months, stop early on validation, report the test
    months.

    The run is named `<name_prefix> <training months> <architecture>` (a retrain passes
    `retrain 2013-12:`) and described by its model card. Under torchrun only rank 0 tracks,
    exports and returns a result; the others help fit.
    """
    from training import distributed
    from training.fit import fit, fresh_model, training_precision
    from training.network import Network
    from training.tensors import pick_device, tensors_of

    data = TrainingData.load(layout, validation.resolved("torch"))
    spec = data.spec
    device = pick_device()
    train_set, valid_set = (
        tensors_of(data.encoded[split], data.tables[split][LABEL].to_numpy(), device)
        for split in ("train", "valid")
    )
    if not distributed.is_main():
        fit(
            fresh_model(spec, model_config, fit_config.seed, device),
            train_set,
            valid_set,
            fit_config,
        )
        return None
    params = _network_params(model_config, fit_config) | {
        "device": device.type,
        "precision": training_precision(device, fit_config.precision),
        "world_size": distributed.world_size(),
    }

    def fit_network() -> Fitted:
        model = fresh_model(spec, model_config, fit_config.seed, device)
        result = fit(model, train_set, valid_set, fit_config, on_epoch=_logged(on_epoch))
        return _fitted_network(Network(model), result)

    name = run_name(data.months["train"], model_config, name_prefix)
    return _tracked_run(data, tracking, name, "torch", params, fit_network)


FitPorted = Callable[..., tuple[Candidate, "FitResult"]]


def ported(framework: str) -> tuple[FitPorted, str]:
    """The fit of the network ported to `framework` ("jax", "tf"), and the device it runs on."""
    if framework == "jax":
        import jax

        from training.jax_network import fit_jax

        return fit_jax, jax.default_backend()
    import tensorflow as tf

    from training.tf_network import fit_tf

    return fit_tf, "gpu" if tf.config.list_physical_devices("GPU") else "cpu"


def train_ported(
    framework: str,
    layout: DataLayout,
    tracking: TrackingConfig,
    model_config: ModelConfig,
    fit_config: FitConfig,
    on_epoch: OnEpoch | None = None,
    name_prefix: str = "train",
    validation: ValidationConfig = DEFAULT_VALIDATION,
) -> TrainResult:
    """The network's architecture and fit in `framework` ("jax": training/jax_network.py,
    "tf": training/tf_network.py), on the same feature table, encoding and holdout."""
    fit_ported, device = ported(framework)
    data = TrainingData.load(layout, validation.resolved(framework))
    params = _network_params(model_config, fit_config) | {
        "device": device,
        "precision": "fp32",
        "world_size": 1,
    }

    def fit_network() -> Fitted:
        train, valid = data.part("train"), data.part("valid")
        network, result = fit_ported(
            data.spec, model_config, train, valid, fit_config, _logged(on_epoch)
        )
        return _fitted_network(network, result)

    name = run_name(data.months["train"], model_config, name_prefix, framework)
    return _tracked_run(data, tracking, name, framework, params, fit_network)


train_jax = partial(train_ported, "jax")  # (layout, tracking, model_config, fit_config, ...)
train_tf = partial(train_ported, "tf")


def _network_params(model_config: ModelConfig, fit_config: FitConfig) -> dict[str, object]:
    return {f"model.{k}": v for k, v in model_config.as_params().items()} | {
        f"fit.{k}": v for k, v in fit_config.as_params().items()
    }


def _logged(on_epoch: OnEpoch | None) -> OnEpoch:
    """Each epoch's losses and speed logged to the active run, then handed to `on_epoch`."""

    def log_epoch(epoch: EpochResult) -> None:
        mlflow.log_metrics(
            {
                "train_loss": epoch.train_loss,
                "valid_loss": epoch.valid_loss,
                "samples_per_s": epoch.samples_per_s,
            },
            step=epoch.epoch,
        )
        if on_epoch:
            on_epoch(epoch)

    return log_epoch


def _fitted_network(candidate: Candidate, result: FitResult) -> Fitted:
    return Fitted(
        candidate,
        {"best_valid_loss": result.best_valid_loss, "best_epoch": result.best_epoch},
        [e.train_loss for e in result.history],
        [e.valid_loss for e in result.history],
        "epoch",
    )


def train_trees(
    layout: DataLayout,
    tracking: TrackingConfig,
    config: TreesConfig,
    on_round: OnRound | None = None,
    name_prefix: str = "train",
    validation: ValidationConfig = DEFAULT_VALIDATION,
) -> TrainResult:
    """Gradient-boosted trees of the framework `config` is for (LightGBM or CatBoost) on the
    same feature table, encoding and holdout as the network."""
    from training.gbdt import fit_trees

    framework = config.framework
    data = TrainingData.load(layout, validation.resolved(framework))
    params = {f"{framework}.{k}": v for k, v in config.as_params().items()} | {"device": "cpu"}

    def fit() -> Fitted:
        def log_round(round_: int, valid_loss: float) -> None:
            if round_ % 10 == 0:
                mlflow.log_metric("valid_loss", valid_loss, step=round_)
            if on_round:
                on_round(round_, valid_loss)

        boosted = fit_trees(data.spec, data.part("train"), data.part("valid"), config, log_round)
        metrics = {
            "best_valid_loss": boosted.valid_loss[boosted.best_round],
            "best_round": boosted.best_round,
        }
        return Fitted(boosted.model, metrics, boosted.train_loss, boosted.valid_loss, "round")

    name = run_name(data.months["train"], framework, name_prefix)
    return _tracked_run(data, tracking, name, framework, params, fit)


def _tracked_run(
    data: TrainingData,
    tracking: TrackingConfig,
    name: str,
    framework: str,
    params: dict[str, object],
    fit: Callable[[], Fitted],
) -> TrainResult:
    """One MLflow run around a framework's fit: its inputs, then its model scored, drawn,
    exported, checked and logged the same way whatever the framework."""
    layout, spec, tables, encoded = data.layout, data.spec, data.tables, data.encoded
    with (
        fluent_tracking(tracking) as experiment_id,
        mlflow.start_run(
            experiment_id=experiment_id, run_name=name, log_system_metrics=True
        ) as run,
    ):
        mlflow.log_params(
            params
            | {"framework": framework}
            | data.validation.as_params()
            | {f"{split}_months": ",".join(months) for split, months in data.months.items()}
        )
        # a random validation split draws its rows from the train and valid folders alike
        random = data.validation.split == "random"
        for split, table in tables.items():
            dataset = TableDataset(
                _integers_as_floats(table),
                local_dataset_source(
                    layout.features if random and split != "test" else layout.split(split)
                ),
                name=f"flights-{split}",
                targets=LABEL,
            )
            mlflow.log_input(
                dataset, context={"train": "training", "valid": "validation"}.get(split, split)
            )
        mlflow.log_artifact(str(layout.spec))
        fitted = fit()
        candidate = fitted.candidate
        metrics = dict(fitted.metrics)
        scored = [split for split in ("valid", "test") if len(tables[split])]
        labels = {split: tables[split][LABEL].to_numpy() for split in scored}
        probabilities = {
            split: candidate.predict(encoded[split].categorical, encoded[split].numerical)
            for split in scored
        }
        for split in scored:
            metrics[f"{split}_roc_auc"] = roc_auc(labels[split], probabilities[split])
            metrics[f"{split}_log_loss"] = log_loss(labels[split], probabilities[split])
        threshold = decision_threshold(labels["valid"], probabilities["valid"])
        metrics["decision_threshold"] = threshold
        mlflow.log_metrics(metrics)
        holdout = scored[-1]  # the test months when there are any
        reference = {
            "roc_auc": metrics[f"{holdout}_roc_auc"],
            "log_loss": metrics[f"{holdout}_log_loss"],
            "mean_probability": float(probabilities[holdout].mean()),
            "delay_rate": float(labels[holdout].mean()),
            "rows": float(len(labels[holdout])),
        }
        output = psi_bins(probabilities[holdout].astype("float64"))

        def log_plots(exported: Path) -> None:
            # ONNX Runtime's own pool (0: a thread per physical core); importance scores one
            # copy of its sample per feature, 2-3x faster than the eager network
            runtime = session(exported, threads=0)
            scored_by = partial(predict_onnx, runtime)
            _log_plots(fitted, spec, encoded["valid"], labels, probabilities, holdout, scored_by)

        logged = log_onnx_model(
            candidate, layout, spec, encoded[holdout], threshold, reference, output, log_plots
        )
        logged_run = mlflow.get_run(run.info.run_id).data
        mlflow.set_tag(DESCRIPTION_TAG, model_card(logged_run.params, logged_run.metrics))
        logger.info("run %s (%s): %s", run.info.run_id, framework, metrics)
    return TrainResult(
        run.info.run_id,
        run.info.experiment_id,
        framework,
        metrics,
        logged,
        fitted.train_loss,
        fitted.valid_loss,
    )


def _log_plots(
    fitted: Fitted,
    spec: FeatureSpec,
    valid: Encoded,
    labels: dict[str, np.ndarray],
    probabilities: dict[str, np.ndarray],
    holdout: str,
    predict: Predict,
) -> None:
    """Learning curves, ROC and calibration on the holdout, permutation importance on valid
    (scored by `predict`: the exported model, which matches the framework's within the parity
    tolerance)."""
    figures = {
        "learning_curves.png": plots.draw_learning_curves(
            fitted.train_loss, fitted.valid_loss, fitted.step
        ),
        "roc.png": plots.draw_roc(
            labels[holdout],
            probabilities[holdout],
            roc_auc(labels[holdout], probabilities[holdout]),
        ),
        "calibration.png": plots.draw_calibration(labels[holdout], probabilities[holdout]),
    }
    drops = permutation_importance(
        predict, valid.categorical, valid.numerical, labels["valid"], spec
    )
    figures["permutation_importance.png"] = plots.draw_importance(list(drops), list(drops.values()))
    mlflow.log_dict(drops, "plots/permutation_importance.json")
    with tempfile.TemporaryDirectory() as tmp:
        for name, figure in figures.items():
            plots.save_png(figure, Path(tmp) / name)
        mlflow.log_artifacts(tmp, "plots")


def _integers_as_floats(table: pd.DataFrame) -> pd.DataFrame:
    """The table as its MLflow dataset records it: MLflow warns, for any integer column, that a
    missing value would break the schema it infers (the flight number, the label)."""
    integers = [name for name, dtype in table.dtypes.items() if is_integer_dtype(dtype)]
    return table.astype(dict.fromkeys(integers, "float64"))
