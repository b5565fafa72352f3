"""The study outlives its creator: one parent run whoever makes it, whenever its maker dies."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.processes import clean_env
from training.config import TrackingConfig
from training.fit import FitConfig
from training.study import PARENT_RUN_ATTR, STUDY_ID_TAG, open_storage, parent_run
from training.tracking import experiment_id
from training.tune import FINISHED, TuneConfig

SMALL_FIT = FitConfig(batch_size=4096, patience=5)


@pytest.fixture
def home(synthetic_home: Path, tmp_path: Path) -> Path:
    shutil.copytree(synthetic_home / "data", tmp_path / "data")
    return tmp_path


def _parents(client: MlflowClient, experiment: str, study: str) -> list[str]:
    runs = client.search_runs([experiment], f"tags.optuna_study = '{study}'")
    return [r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags]


def test_racing_workers_agree_on_one_parent_run(tmp_path: Path) -> None:
    tracking = TrackingConfig(tmp_path)
    client = tracking.client()
    experiment = experiment_id(client, tracking)
    config = TuneConfig(study="race")
    storage = open_storage(config, tmp_path)
    optuna.create_study(study_name="race", storage=storage)
    workers, barrier = 4, threading.Barrier(4)
    found: list[str] = []

    def worker() -> None:
        study = optuna.load_study(study_name="race", storage=storage)
        barrier.wait()  # all of them find the parent missing at once
        found.append(parent_run(client, storage, study, experiment))

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == workers and len(set(found)) == 1
    assert _parents(client, experiment, "race") == found[:1]  # the spares were deleted
    recorded = optuna.load_study(study_name="race", storage=storage).user_attrs[PARENT_RUN_ATTR]
    assert recorded == found[0]


def test_a_parent_run_whose_maker_died_before_recording_it_is_adopted(tmp_path: Path) -> None:
    tracking = TrackingConfig(tmp_path)
    client = tracking.client()
    experiment = experiment_id(client, tracking)
    storage = open_storage(TuneConfig(study="orphan"), tmp_path)
    study = optuna.create_study(study_name="orphan", storage=storage)
    # what a maker killed between its `create_run` and its record leaves behind
    orphan = client.create_run(
        experiment, tags={"optuna_study": "orphan", STUDY_ID_TAG: str(study._study_id)}
    ).info.run_id
    # a run of another study of the same name (deleted and made again) is not adopted
    client.create_run(experiment, tags={"optuna_study": "orphan", STUDY_ID_TAG: "999"})

    assert parent_run(client, storage, study, experiment) == orphan
    assert parent_run(client, storage, study, experiment) == orphan
    parents = client.search_runs([experiment], f"tags.{STUDY_ID_TAG} = '{study._study_id}'")
    assert [r.info.run_id for r in parents] == [orphan]


def _tune(home: Path) -> subprocess.Popen:
    options = ["--study", "killed", "--trials", "2", "--epochs", "1", "--pruner", "none"]
    return subprocess.Popen(
        [sys.executable, "-m", "mlops", "--home", str(home), "tune", *options],
        env=clean_env(MLOPS_FIT__BATCH_SIZE="4096"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_the_next_tune_completes_a_study_whose_creator_was_killed(home: Path) -> None:
    """SIGKILL at the moment seen from outside: the study is in Optuna's storage and its
    parent run is not recorded (the creator is still setting up MLflow's store)."""
    storage = open_storage(TuneConfig(study="killed"), home)  # the schema, as a server's
    creator = _tune(home)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert creator.poll() is None, creator.communicate()[0]
            assert time.monotonic() < deadline, "the study was never created"
            try:
                study = optuna.load_study(study_name="killed", storage=storage)
                break
            except KeyError:  # not yet
                pass
            time.sleep(0.02)
        creator.send_signal(signal.SIGKILL)
        creator.wait(timeout=30)
    finally:
        creator.kill()
    assert creator.returncode == -signal.SIGKILL
    assert PARENT_RUN_ATTR not in study.user_attrs, "killed too late: the parent was recorded"

    successor = _tune(home)
    output, _ = successor.communicate(timeout=300)
    assert successor.returncode == 0, output
    study = optuna.load_study(study_name="killed", storage=storage)
    assert len(study.get_trials(states=FINISHED)) >= 2
    tracking = TrackingConfig(home)
    client = tracking.client()
    parents = _parents(client, experiment_id(client, tracking), "killed")
    assert parents == [study.user_attrs[PARENT_RUN_ATTR]]
    assert client.get_run(parents[0]).info.status == "FINISHED"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_database_restart_mid_study_costs_no_trial_of_the_budget(
    restartable_postgres, home: Path
) -> None:
    url = restartable_postgres.create_database("optuna")
    url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    config = TuneConfig(study="restart", storage=url, heartbeat_interval=1, grace_period=3)
    storage = open_storage(config, home)  # the schema, as a server's
    options = ["--study", "restart", "--trials", "4", "--epochs", "3", "--pruner", "none"]
    tuner = subprocess.Popen(
        [sys.executable, "-m", "mlops", "--home", str(home), "tune", *options],
        env=clean_env(
            MLOPS_OPTUNA_STORAGE=url,
            MLOPS_FIT__BATCH_SIZE="1024",
            MLOPS_TUNE__HEARTBEAT_INTERVAL="1",
            MLOPS_TUNE__GRACE_PERIOD="3",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:  # a trial in the middle of its training, and one finished before it
            assert tuner.poll() is None, tuner.communicate()[0]
            assert time.monotonic() < deadline, "no trial got going"
            try:
                trials = optuna.load_study(study_name="restart", storage=storage).get_trials()
            except KeyError:
                trials = []
            states = [t.state for t in trials]
            if TrialState.COMPLETE in states and any(
                t.state == TrialState.RUNNING and t.intermediate_values for t in trials
            ):
                break
            time.sleep(0.1)
        restartable_postgres.restart(mode="immediate", down_s=5)
        output, _ = tuner.communicate(timeout=400)
    finally:
        tuner.kill()
    assert tuner.returncode == 0, output
    log = "".join(p.read_text() for p in (home / "logs").glob("*tune.log"))
    assert "database went away" in log or "heartbeat of trial" in log, log  # it was felt

    trials = optuna.load_study(study_name="restart", storage=open_storage(config, home)).trials
    assert len([t for t in trials if t.state in FINISHED]) >= 4
    assert not [t for t in trials if t.state == TrialState.RUNNING]  # nothing left dangling
    for failed in (t for t in trials if t.state == TrialState.FAIL):  # cut by the outage
        retries = [t for t in trials if failed.number in t.system_attrs.get("retry_history", [])]
        assert len(retries) == 1 and retries[0].state in FINISHED
        assert retries[0].params == failed.params
