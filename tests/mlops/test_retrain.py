"""`mlops retrain` and `mlops schedule`: the next month in, drift, a gated challenger, a lock."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from mlops.cli import app
from pipelines.layout import DataLayout
from tests.processes import MlflowServer, clean_env

from .conftest import SMALL, SPLIT

runner = CliRunner()


def _champion(home: Path):
    client = MlflowClient(f"sqlite:///{(home / 'mlflow.db').resolve()}")
    return client, client.get_model_version_by_alias("flight-delay", "champion")


def test_retrain_takes_the_next_month_reports_drift_and_runs_the_gate(
    home_with_champion: Path,
) -> None:
    home = home_with_champion
    result = runner.invoke(app, ["--home", str(home), "retrain"])
    assert result.exit_code == 0, result.output
    assert "retrain of 2013-11" in result.output
    assert DataLayout(home).months("flights")[-1] == "2013-11"
    client, _ = _champion(home)
    runs = client.search_runs(
        [client.get_experiment_by_name("flight-delay").experiment_id],
        "tags.retrain_month = '2013-11'",
    )
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["gate_decision"] in {"promoted", "rejected"}
    assert run.data.tags["retrain_trigger"] == "cli"
    assert "gate_challenger_auc" in run.data.metrics
    # validated on a random tenth of every month before November, trained on the rest
    assert run.data.params["validation"] == "random"
    labelled = ",".join(f"2013-{month:02d}" for month in range(1, 11))
    assert run.data.params["train_months"] == run.data.params["valid_months"] == labelled
    psi = {k: v for k, v in run.data.metrics.items() if k.startswith("psi.")}
    assert len(psi) == 39 and all(v >= 0 for v in psi.values())
    assert psi["psi.month"] > 1  # November is a month training never saw
    drift = {a.path for a in client.list_artifacts(run.info.run_id, "drift")}
    assert drift == {"drift/psi.json", "drift/psi.png"}
    test_months = pd.read_parquet(DataLayout(home).split("test"))["scheduled_departure"]
    assert set(test_months.dt.strftime("%Y-%m")) == {"2013-11"}


@pytest.mark.slow
def test_a_lightgbm_champion_is_retrained_as_lightgbm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retrain's challenger is of the champion's framework, so a scheduled retrain keeps
    renewing the model the gate chose instead of a network that already lost to it."""
    pytest.importorskip("lightgbm", reason="the `lightgbm` extra: pip install -e '.[lightgbm]'")
    for name, value in {**SMALL, **SPLIT, "MLOPS_LIGHTGBM__ROUNDS": "60"}.items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "state"
    for command in (
        ["data", "ingest", "--until", "2013-10"],
        ["data", "features"],
        ["train", "--framework", "lightgbm"],
        ["promote"],
        ["retrain"],
    ):
        result = runner.invoke(app, ["--home", str(home), *command])
        assert result.exit_code == 0, result.output
    assert "a lightgbm challenger" in result.output
    client, _ = _champion(home)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("flight-delay").experiment_id],
        "tags.retrain_month = '2013-11'",
    )
    assert run.data.tags["framework"] == "lightgbm"
    assert run.data.tags["gate_challenger_framework"] == "lightgbm"
    assert run.data.tags["gate_champion_framework"] == "lightgbm"
    assert run.data.params["lightgbm.rounds"] == "60"


@pytest.mark.slow
def test_a_failed_retrain_leaves_the_champion_and_the_data(
    home_with_champion: Path, tmp_path: Path
) -> None:
    home = home_with_champion
    _, before = _champion(home)
    bad = tmp_path / "flights.csv"
    bad.write_text("year,month,day\n2013,11,1\n")
    result = runner.invoke(app, ["--home", str(home), "retrain", "--flights", str(bad)])
    assert result.exit_code == 3, result.output
    assert "flights.csv" in result.output
    _, after = _champion(home)
    assert after.version == before.version
    assert DataLayout(home).months("flights")[-1] == "2013-10"


@pytest.fixture
def mlflow_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    server = MlflowServer(tmp_path / "mlflow")
    server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)  # for home_with_champion
    try:
        yield server
    finally:
        server.stop()


def _mlops(home: Path, *command: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mlops", "--home", str(home), *command],
        env=clean_env(**SMALL, **SPLIT, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_retrain_that_failed_after_its_ingest_is_completed_by_the_next_tick(
    mlflow_server: MlflowServer, home_with_champion: Path, tmp_path: Path
) -> None:
    home, layout = home_with_champion, DataLayout(home_with_champion)
    # MLflow's client retries a refused connection for minutes by default: fail at once
    failing = _mlops(
        home, "retrain", MLFLOW_TRACKING_URI=mlflow_server.uri, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0"
    )
    try:
        deadline = time.monotonic() + 300
        while "2013-11" not in layout.months("flights"):  # ingest has committed the month
            assert failing.poll() is None, failing.communicate()[0]
            assert time.monotonic() < deadline, "November was never ingested"
            time.sleep(0.05)
        mlflow_server.stop(signal.SIGKILL)  # MLflow gone at that moment, as in a crash
        output, _ = failing.communicate(timeout=300)
    finally:
        failing.kill()
    assert failing.returncode != 0, output
    assert layout.months("flights")[-1] == "2013-11"

    mlflow_server.start()
    scratch = tmp_path / "scratch"  # the tick's temporary files
    scratch.mkdir()
    tick = _mlops(
        home, "schedule", "--once", MLFLOW_TRACKING_URI=mlflow_server.uri, TMPDIR=str(scratch)
    )
    output, _ = tick.communicate(timeout=600)
    assert tick.returncode == 0, output
    assert "tick: promoted" in output or "tick: kept the champion" in output, output
    assert layout.months("flights")[-1] == "2013-11"  # November again, not December
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("flight-delay").experiment_id
    runs = client.search_runs([experiment], "tags.retrain_month = '2013-11'")
    assert len(runs) == 1, output
    assert runs[0].data.tags["gate_decision"] in {"promoted", "rejected"}
    assert runs[0].data.tags["retrain_trigger"] == "cron"
    drift = {a.path for a in client.list_artifacts(runs[0].info.run_id, "drift")}
    assert drift == {"drift/psi.json", "drift/psi.png"}
    # What libraries keep there by design, one of each however many ticks run: Dask's scratch
    # space (its lock files) and onnxruntime's session-id file. A gate's or a drift report's
    # downloads (the models, the specs: megabytes) would be anything else.
    leftovers = {p.name for p in scratch.iterdir()} - {"dask-scratch-space", ".ses"}
    assert leftovers == set()
    assert sum(f.stat().st_size for f in scratch.rglob("*") if f.is_file()) < 64 * 1024
