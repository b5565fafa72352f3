"""The `mlops` CLI: help on every command, errors mapped to exit codes, the run command."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlops.cli import app
from mlops.settings import Settings

runner = CliRunner()


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["data"],
        ["data", "ingest"],
        ["data", "features"],
        ["data", "synth"],
        ["run"],
        ["train"],
        ["promote"],
        ["evaluate"],
        ["tune"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_a_bad_source_exits_with_a_message_naming_file_and_column(tmp_path: Path) -> None:
    source = tmp_path / "mine.csv"
    source.write_text("year,month,day\n2013,1,1\n")
    result = runner.invoke(
        app, ["--home", str(tmp_path / "h"), "data", "ingest", "--flights", str(source)]
    )
    assert result.exit_code == 3
    assert "mine.csv" in result.output and "column 'dep_time'" in result.output


def test_a_bad_month_is_rejected() -> None:
    result = runner.invoke(app, ["data", "ingest", "--until", "2013-9"])
    assert result.exit_code == 2
    assert "YYYY-MM" in result.output


def test_features_before_ingest_says_what_to_do(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--home", str(tmp_path), "data", "features"])
    assert result.exit_code == 2
    assert "run ingest first" in result.output


def test_run_goes_from_raw_data_to_a_champion_and_the_gate_guards_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", "--trials", "2", "--tune-epochs", "1", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    data = tmp_path / "state" / "data"
    assert (data / "feature_spec.json").exists()
    for split in ("train", "valid", "test"):
        assert any((data / "features" / split).glob("*.parquet"))
    assert any((data / "lookups" / "flight_events").glob("*.npz"))
    output = result.output.replace("\n", "")
    assert str(data) in output
    assert "flight-delay v1 (champion)" in output
    assert "mlflow ui --backend-store-uri sqlite:///" in output
    assert "http://127.0.0.1:8000/docs" in output  # where the API will answer
    assert (tmp_path / "state" / "optuna.db").exists()

    evaluated = runner.invoke(app, ["evaluate"])
    assert evaluated.exit_code == 0, evaluated.output
    assert "champion v1: ROC-AUC" in evaluated.output

    again = runner.invoke(app, ["run", "--skip-if-champion"])  # what the stack's trainer does
    assert again.exit_code == 0 and "nothing to do" in again.output

    guarded = runner.invoke(app, ["promote", "--min-auc-gain", "0.5"])
    assert guarded.exit_code == 0, guarded.output
    assert "kept the champion" in guarded.output and "version 2" in guarded.output


def test_promote_without_a_run_says_what_to_do(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--home", str(tmp_path), "promote"])
    assert result.exit_code == 2
    assert "run `mlops train` first" in result.output


def test_settings_read_the_environment_at_the_edge(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_DASK__N_WORKERS", "3")
    monkeypatch.setenv("MLOPS_FEATURES__VALID_START", "2013-09")
    settings = Settings(_env_file=None)
    assert settings.dask.n_workers == 3
    assert settings.features.valid_start == "2013-09"
    monkeypatch.setenv("MLOPS_DASK_SCHEDULER", "not-an-address")
    with pytest.raises(ValueError, match="tcp://host:8786"):
        Settings(_env_file=None)
