"""The state the retrain tests start from."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlops.cli import app

runner = CliRunner()
SMALL = {
    "MLOPS_MODEL__WIDTH": "16",
    "MLOPS_MODEL__DEPTH": "1",
    "MLOPS_FIT__EPOCHS": "1",
    "MLOPS_FIT__BATCH_SIZE": "4096",
}
SPLIT = {"MLOPS_FEATURES__VALID_START": "2013-09", "MLOPS_FEATURES__TEST_START": "2013-10"}


@pytest.fixture
def home_with_champion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Data through October 2013 and a champion trained on it (tested on October), in the
    MLflow store MLFLOW_TRACKING_URI names (a local one when unset)."""
    for name, value in SMALL.items():
        monkeypatch.setenv(name, value)
    for name, value in SPLIT.items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "state"
    for command in (
        ["data", "ingest", "--until", "2013-10"],
        ["data", "features"],
        ["train"],
        ["promote"],
    ):
        result = runner.invoke(app, ["--home", str(home), *command])
        assert result.exit_code == 0, result.output
    return home
