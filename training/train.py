"""One training run, tracked in MLflow: data, model, fit, test-month figures."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from pandas.api.types import is_integer_dtype

from pipelines.layout import SPLITS, DataLayout
from pipelines.metrics import log_loss, roc_auc
from pipelines.spec import LABEL, FeatureSpec, psi_bins
from pipelines.storage import read_parquet_folder
from training import distributed, plots
from training.bundle import LoggedModel, decision_threshold, log_onnx_model
from training.config import FitConfig, ModelConfig, TrackingConfig
from training.fit import FitResult, OnEpoch, fit, fresh_model, predict_logits
from training.importance import permutation_importance
from training.metrics import sigmoid
from training.model import TabularNet
from training.model_card import model_card, run_name
from training.tensors import Tensors, pick_device, to_tensors
from training.tracking import DESCRIPTION_TAG, fluent_tracking, local_dataset_source

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    experiment_id: str
    fit: FitResult
    metrics: dict[str, float]
    model: LoggedModel


def load_splits(layout: DataLayout) -> dict[str, pd.DataFrame]:
    return {split: read_parquet_folder(layout.split(split)) for split in SPLITS}


def _log_plots(
    model: TabularNet,
    spec: FeatureSpec,
    valid: Tensors,
    labels: np.ndarray,
    probabilities: np.ndarray,
    result: FitResult,
) -> None:
    """Learning curves, ROC and calibration on the holdout, permutation importance on valid."""
    history = result.history
    figures = {
        "learning_curves.png": plots.draw_learning_curves(
            [e.train_loss for e in history], [e.valid_loss for e in history]
        )
    }
    figures["roc.png"] = plots.draw_roc(labels, probabilities, roc_auc(labels, probabilities))
    figures["calibration.png"] = plots.draw_calibration(labels, probabilities)
    drops = permutation_importance(model, valid, spec)
    figures["permutation_importance.png"] = plots.draw_importance(list(drops), list(drops.values()))
    mlflow.log_dict(drops, "plots/permutation_importance.json")
    with tempfile.TemporaryDirectory() as tmp:
        for name, figure in figures.items():
            plots.save_png(figure, Path(tmp) / name)
        mlflow.log_artifacts(tmp, "plots")


def train(
    layout: DataLayout,
    tracking: TrackingConfig,
    model_config: ModelConfig,
    fit_config: FitConfig,
    on_epoch: OnEpoch | None = None,
    name_prefix: str = "train",
) -> TrainResult | None:
    """Fit on the training months, stop early on validation, report the test months.

    The run is named `<name_prefix> <training months> <architecture>` (a retrain passes
    `retrain 2013-12:`) and described by its model card. Under torchrun only rank 0 tracks,
    exports and returns a result; the others help fit.
    """
    layout = layout.pinned()  # a build published meanwhile must not mix into this run's reads
    spec = FeatureSpec.load(layout.spec)
    tables = load_splits(layout)
    device = pick_device()
    tensors = {split: to_tensors(table, spec, device) for split, table in tables.items()}
    if not distributed.is_main():
        fit(
            fresh_model(spec, model_config, fit_config.seed, device),
            tensors["train"],
            tensors["valid"],
            fit_config,
        )
        return None
    with (
        fluent_tracking(tracking) as experiment_id,
        mlflow.start_run(
            experiment_id=experiment_id,
            run_name=run_name(spec, model_config, name_prefix),
            log_system_metrics=True,
        ) as run,
    ):
        mlflow.log_params(
            {f"model.{k}": v for k, v in model_config.as_params().items()}
            | {f"fit.{k}": v for k, v in fit_config.as_params().items()}
            | {
                "device": device.type,
                "world_size": distributed.world_size(),
                "train_months": ",".join(spec.splits["train"].months),
            }
            | {
                f"{split}_months": ",".join(spec.splits[split].months)
                for split in ("valid", "test")
                if split in spec.splits
            }
        )
        for split, table in tables.items():
            dataset = mlflow.data.from_pandas(
                _integers_as_floats(table),
                source=local_dataset_source(layout.split(split)),
                targets=LABEL,
                name=f"flights-{split}",
            )
            mlflow.log_input(
                dataset, context={"train": "training", "valid": "validation"}.get(split, split)
            )
        mlflow.log_artifact(str(layout.spec))

        def log_epoch(epoch) -> None:
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

        model = fresh_model(spec, model_config, fit_config.seed, device)
        result = fit(model, tensors["train"], tensors["valid"], fit_config, on_epoch=log_epoch)
        metrics = {"best_valid_loss": result.best_valid_loss, "best_epoch": result.best_epoch}
        scored = [split for split in ("valid", "test") if len(tables[split])]
        labels = {split: tables[split][LABEL].to_numpy() for split in scored}
        probabilities = {
            split: sigmoid(predict_logits(model, tensors[split]).cpu().numpy()) for split in scored
        }
        for split in scored:
            metrics[f"{split}_roc_auc"] = roc_auc(labels[split], probabilities[split])
            metrics[f"{split}_log_loss"] = log_loss(labels[split], probabilities[split])
        threshold = decision_threshold(labels["valid"], probabilities["valid"])
        metrics["decision_threshold"] = threshold
        mlflow.log_metrics(metrics)
        holdout = scored[-1]  # the test months when there are any
        _log_plots(model, spec, tensors["valid"], labels[holdout], probabilities[holdout], result)
        reference = {
            "roc_auc": metrics[f"{holdout}_roc_auc"],
            "log_loss": metrics[f"{holdout}_log_loss"],
            "mean_probability": float(probabilities[holdout].mean()),
            "delay_rate": float(labels[holdout].mean()),
            "rows": float(len(labels[holdout])),
        }
        output = psi_bins(probabilities[holdout].astype("float64"))
        logged = log_onnx_model(model, layout, spec, tensors[holdout], threshold, reference, output)
        logged_run = mlflow.get_run(run.info.run_id).data
        mlflow.set_tag(DESCRIPTION_TAG, model_card(logged_run.params, logged_run.metrics))
        logger.info("run %s: %s", run.info.run_id, metrics)
    return TrainResult(run.info.run_id, run.info.experiment_id, result, metrics, logged)


def _integers_as_floats(table: pd.DataFrame) -> pd.DataFrame:
    """The table as its MLflow dataset records it: MLflow warns, for any integer column, that a
    missing value would break the schema it infers (the flight number, the label)."""
    integers = [name for name, dtype in table.dtypes.items() if is_integer_dtype(dtype)]
    return table.astype(dict.fromkeys(integers, "float64"))
