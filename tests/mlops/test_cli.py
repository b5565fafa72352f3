"""The `mlops` CLI: help on every command, errors mapped to exit codes, settings at the edge.

`mlops run` and the commands after it are tested end to end in tests/test_first_hour.py.
"""

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
        ["retrain"],
        ["schedule"],
        ["serve"],
        ["export"],
        ["predict"],
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


@pytest.mark.parametrize(
    ("command", "env", "says"),
    [
        (["run", "--frameworks", "torch,xgboost"], {}, "got 'torch,xgboost'"),
        (["run", "--frameworks", "torch,torch"], {}, "distinct names"),
        (["train", "--framework", "lightgbm", "--epochs", "3"], {}, "MLOPS_LIGHTGBM__ROUNDS"),
        # each process torchrun starts: DDP is the PyTorch network's
        (["train", "--framework", "jax"], {"WORLD_SIZE": "2"}, "as a single process"),
    ],
)
def test_a_framework_that_cannot_be_trained_is_refused_before_any_work(
    command: list[str],
    env: dict[str, str],
    says: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = runner.invoke(app, ["--home", str(tmp_path), *command])
    assert result.exit_code == 2, result.output
    assert says in " ".join(result.output.split())
    assert not (tmp_path / "data").exists()


def test_features_before_ingest_says_what_to_do(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--home", str(tmp_path), "data", "features"])
    assert result.exit_code == 2
    assert "run ingest first" in result.output


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
    assert settings.validation.split == "auto"
    monkeypatch.setenv("MLOPS_VALIDATION__SPLIT", "month")
    assert Settings(_env_file=None).validation.split == "month"
    monkeypatch.setenv("MLOPS_VALIDATION__FRACTION", "1.5")
    with pytest.raises(ValueError, match=r"validation\.fraction"):
        Settings(_env_file=None)
    monkeypatch.delenv("MLOPS_VALIDATION__FRACTION")
    monkeypatch.setenv("MLOPS_DASK_SCHEDULER", "not-an-address")
    with pytest.raises(ValueError, match="tcp://host:8786"):
        Settings(_env_file=None)


@pytest.mark.parametrize(
    ("second", "first"),
    [
        ("MLOPS_DASK__SCHEDULER", "MLOPS_DASK_SCHEDULER"),
        ("MLOPS_TUNE__STORAGE", "MLOPS_OPTUNA_STORAGE"),
    ],
)
def test_a_setting_has_one_name(monkeypatch: pytest.MonkeyPatch, second: str, first: str) -> None:
    monkeypatch.setenv(second, "tcp://elsewhere:8786")
    with pytest.raises(ValueError, match=f"{second} is not read: set {first} instead"):
        Settings(_env_file=None)
