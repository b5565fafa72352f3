"""`torchrun --nproc_per_node 2 -m mlops train`: DDP with gloo on CPU, one tracked run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from training.config import TrackingConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_two_ranks_train_one_model_and_only_rank_0_logs(
    synthetic_home: Path, tmp_path: Path
) -> None:
    shutil.copytree(synthetic_home / "data", tmp_path / "data")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", "-m", "mlops", "--home", str(tmp_path), "train"]
    command += ["--epochs", "3", "--batch-size", "256"]
    env = os.environ | {"MLOPS_MODEL__WIDTH": "16", "MLOPS_MODEL__DEPTH": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr

    tracking = TrackingConfig(tmp_path)
    client = MlflowClient(tracking.resolved_uri)
    experiment = client.get_experiment_by_name(tracking.experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["world_size"] == "2"
    assert run.data.params["device"] == "cpu"
    history = client.get_metric_history(run.info.run_id, "samples_per_s")
    assert [m.step for m in history] == [0, 1, 2]
    assert run.data.metrics["valid_roc_auc"] > 0.7  # the synthetic signal was learned
    assert run.data.metrics["onnx_parity_max_abs_diff_b4096"] <= 1e-5
    assert done.stderr.count("MLflow run") == 1  # the console is stderr
