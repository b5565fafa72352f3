"""MLflow's backend store and Optuna's storage on the real PostgreSQL (skipped without one)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psycopg
import pytest
from mlflow import MlflowClient

from pipelines.storage import read_parquet_folder
from training.config import TrackingConfig
from training.fit import FitConfig
from training.model import ModelConfig
from training.registry import GateConfig, promote
from training.study import open_storage
from training.tracking import experiment_id
from training.train import train
from training.tune import FINISHED, FIT_SEARCHED, NETWORK_SEARCHED, RUN_ATTR, TuneConfig

from .conftest import write_feature_table

pytestmark = pytest.mark.timeout(300)


def test_mlflow_tracks_and_registers_in_postgres(postgres_database, tmp_path: Path) -> None:
    uri = postgres_database("mlflow")
    layout = write_feature_table(tmp_path, rows=8_000)
    tracking = TrackingConfig(tmp_path, uri=uri)
    result = train(
        layout, tracking, ModelConfig(width=16, depth=1), FitConfig(epochs=1, batch_size=4096)
    )
    holdout = read_parquet_folder(layout.split("test"))
    decision = promote(tracking.client(), result.run_id, holdout, GateConfig())
    assert decision.promoted

    client = MlflowClient(uri)
    assert client.get_run(result.run_id).data.params["model.width"] == "16"
    assert client.get_model_version_by_alias("flight-delay", "champion").run_id == result.run_id
    with psycopg.connect(uri) as connection, connection.cursor() as cursor:
        cursor.execute("select count(*) from runs where run_uuid = %s", (result.run_id,))
        assert cursor.fetchone() == (1,)
        cursor.execute("select count(*) from registered_model_aliases")
        assert cursor.fetchone() == (1,)
    assert not (tmp_path / "mlflow.db").exists()  # nothing fell back to the local store
    assert (tmp_path / "mlartifacts").is_dir()


def _tune_process(home: Path, env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "mlops", "--home", str(home), "tune", "--trials", "8"]
    command += ["--epochs", "3", "--pruner", "none", "--study", "shared"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


DRAWN = set(NETWORK_SEARCHED + FIT_SEARCHED)


def _wait_for_running_trial(study: optuna.Study, pid: int, timeout: float) -> int:
    """A trial of process `pid` that is training: its MLflow run has started and it has drawn
    every parameter (the run starts before the draw; a kill in between leaves fewer to retry)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for trial in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
            mine = trial.user_attrs.get("worker", "").endswith(f":{pid}")
            if mine and RUN_ATTR in trial.user_attrs and trial.params.keys() >= DRAWN:
                return trial.number
        time.sleep(0.2)
    raise AssertionError(f"process {pid} never started a trial")


@pytest.mark.slow
def test_two_tuning_processes_share_a_study_and_a_killed_ones_trial_is_retried(
    postgres_database, tmp_path: Path
) -> None:
    mlflow_uri, optuna_uri = postgres_database("mlflow"), postgres_database("optuna")
    write_feature_table(tmp_path)
    config = TuneConfig(study="shared", storage=optuna_uri, heartbeat_interval=1, grace_period=3)
    storage = open_storage(config, tmp_path)  # makes the schemas once, as a server would
    tracking = TrackingConfig(tmp_path, uri=mlflow_uri)
    experiment = experiment_id(tracking.client(), tracking)
    env = os.environ | {
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "MLOPS_OPTUNA_STORAGE": optuna_uri,
        "MLOPS_TUNE__HEARTBEAT_INTERVAL": "1",
        "MLOPS_TUNE__GRACE_PERIOD": "3",
        "MLOPS_FIT__BATCH_SIZE": "4096",
    }
    doomed, survivor = _tune_process(tmp_path, env), _tune_process(tmp_path, env)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                study = optuna.load_study(study_name="shared", storage=storage)
                break
            except KeyError:
                assert time.monotonic() < deadline, "no process created the study"
                time.sleep(0.5)
        killed = _wait_for_running_trial(study, doomed.pid, timeout=120)
        doomed.send_signal(signal.SIGKILL)
        output, _ = survivor.communicate(timeout=240)
    finally:
        for process in (doomed, survivor):
            process.kill()
    assert survivor.returncode == 0, output.decode()

    trials = optuna.load_study(study_name="shared", storage=storage).get_trials()
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) >= 8
    dead = trials[killed]
    assert dead.state == optuna.trial.TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1 and retries[0].state in FINISHED
    assert retries[0].params == dead.params
    assert {t.user_attrs["worker"] for t in finished} == {retries[0].user_attrs["worker"]}

    client = MlflowClient(mlflow_uri)
    assert client.get_run(dead.user_attrs[RUN_ATTR]).info.status == "KILLED"
    parents = client.search_runs([experiment], "tags.optuna_study = 'shared'")
    parent = next(r for r in parents if "mlflow.parentRunId" not in r.data.tags)
    for trial in finished:
        run = client.get_run(trial.user_attrs[RUN_ATTR])
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED"
