"""What a training run logs for serving: the ONNX model, its metadata and its contract.

The counterpart of `serving/bundle.py`, which reads and verifies what is written here.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.onnx
import numpy as np
import onnx
from mlflow.models import infer_signature

from pipelines.layout import DataLayout
from pipelines.spec import Encoded, FeatureSpec, sha256_of
from training.export import Candidate, ParityReport, check_parity

MODEL_NAME_IN_RUN = "model"
MODEL_ID_TAG = "onnx_model_id"  # the run's logged ONNX model, for registering it
FRAMEWORK_TAG = "framework"  # what made the run's model: "torch", "lightgbm"


@dataclass(frozen=True)
class LoggedModel:
    model_uri: str
    model_id: str  # MLflow 3's logged model: what a registered version points at
    onnx_sha256: str
    parity: ParityReport


def decision_threshold(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The probability cut that maximizes F1 on the validation month."""
    order = np.argsort(-probabilities)
    hits = np.cumsum(labels[order] == 1)
    predicted = np.arange(1, len(order) + 1)
    f1 = 2 * hits / (predicted + max(int((labels == 1).sum()), 1))
    return float(probabilities[order][int(np.argmax(f1))])


PARITY_SAMPLE_ROWS = 64


def _parity_sample(candidate: Candidate, categorical: np.ndarray, numerical: np.ndarray) -> dict:
    """Inputs and the framework's probabilities for a few rows: a server checks a model against
    them before it serves it (`serving/runtime.py`)."""
    codes, values = categorical[:PARITY_SAMPLE_ROWS], numerical[:PARITY_SAMPLE_ROWS]
    return {
        "categorical": codes.tolist(),
        "numerical": values.tolist(),
        "delay_probability": candidate.predict(codes, values).astype("float32").tolist(),
    }


def log_onnx_model(
    candidate: Candidate,
    layout: DataLayout,
    spec: FeatureSpec,
    parity_data: Encoded,
    threshold: float,
    holdout: dict[str, float],
    output_bins: tuple[list[float], list[float]],
    on_checked: Callable[[Path], None] | None = None,
) -> LoggedModel:
    """Export, check parity on `parity_data` (`check_parity`), then log; a failed check logs
    nothing.
    `on_checked` is given the exported file once its parity holds, before anything is logged
    (the run's plots score through it: the served model's arithmetic, at ONNX Runtime's speed).
    `holdout`: the model's figures on its holdout (ROC-AUC, log loss, mean probability, delay
    rate), what the served model's realized quality is held against; `output_bins`: the PSI
    bins of its holdout probabilities (`pipelines.spec.psi_bins`), its output drift's
    reference. The candidate's framework is recorded with the model and on the run."""
    categorical, numerical = parity_data.categorical, parity_data.numerical
    with tempfile.TemporaryDirectory() as tmp:
        path = candidate.export_onnx(categorical, numerical, Path(tmp) / "model.onnx")
        parity = check_parity(candidate, path, categorical, numerical)  # raises ParityError
        digest = sha256_of(path)
        onnx_model = onnx.load(str(path))
        if on_checked:
            on_checked(path)
    mlflow.log_metrics(
        {f"onnx_parity_max_abs_diff_b{size}": diff for size, diff in parity.max_abs_diff.items()}
    )
    example = {
        "categorical": categorical[:5],
        "numerical": numerical[:5],
    }
    probabilities = np.zeros(5, dtype="float32")
    info = mlflow.onnx.log_model(
        onnx_model,
        name=MODEL_NAME_IN_RUN,
        signature=infer_signature(example, probabilities),
        input_example=example,
        save_as_external_data=False,
        metadata={
            "onnx_sha256": digest,
            "framework": candidate.framework,
            "decision_threshold": threshold,
            "holdout": holdout,
            "output_psi": {"edges": output_bins[0], "fractions": output_bins[1]},
            "feature_spec_sha256": sha256_of(layout.spec),
            "lookups": {name: entry.sha256 for name, entry in spec.lookups.items()},
        },
    )
    sample = _parity_sample(candidate, categorical, numerical)
    mlflow.log_dict(sample, "contract/parity_sample.json")
    mlflow.log_artifact(str(layout.spec), "contract")
    mlflow.log_artifacts(str(layout.lookups), "contract/lookups")
    mlflow.set_tags(
        {
            "onnx_sha256": digest,
            MODEL_ID_TAG: info.model_id,
            FRAMEWORK_TAG: candidate.framework,
            "decision_threshold": f"{threshold:.6f}",
        }
    )
    return LoggedModel(info.model_uri, info.model_id, digest, parity)
