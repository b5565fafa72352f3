"""`mlops retrain` and `mlops schedule`: the next month in, drift, a gated challenger, a lock."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from mlops.cli import app
from pipelines.layout import DataLayout

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
    assert "gate_challenger_auc" in run.data.metrics
    psi = {k: v for k, v in run.data.metrics.items() if k.startswith("psi.")}
    assert len(psi) == 39 and all(v >= 0 for v in psi.values())
    assert psi["psi.month"] > 1  # November is a month training never saw
    drift = {a.path for a in client.list_artifacts(run.info.run_id, "drift")}
    assert drift == {"drift/psi.json", "drift/psi.png"}
    test_months = pd.read_parquet(DataLayout(home).split("test"))["scheduled_departure"]
    assert set(test_months.dt.strftime("%Y-%m")) == {"2013-11"}


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
