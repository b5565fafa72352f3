"""NAME_FILE settings (the compose stack's secrets): read at the edge, a set NAME wins."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mlops.settings import SECRET_VARIABLES, secrets_from_files
from tests.processes import clean_env


def test_a_file_fills_its_setting_and_a_value_given_wins(tmp_path: Path) -> None:
    (tmp_path / "lock").write_text("postgresql://retrain_lock:pw@db/mlops\n")
    (tmp_path / "token").write_text("from-the-file")
    environ = {
        "MLOPS_LOCK_URL_FILE": str(tmp_path / "lock"),
        "MLOPS_SERVE__ADMIN_TOKEN_FILE": str(tmp_path / "token"),
        "MLOPS_SERVE__ADMIN_TOKEN": "given",
        "MLOPS_HOME_FILE": str(tmp_path / "token"),  # not a secret: never read from a file
    }
    secrets_from_files(environ)
    assert environ["MLOPS_LOCK_URL"] == "postgresql://retrain_lock:pw@db/mlops"
    assert environ["MLOPS_SERVE__ADMIN_TOKEN"] == "given"
    assert "MLOPS_HOME" not in environ
    assert "MLFLOW_TRACKING_PASSWORD" in SECRET_VARIABLES  # MLflow's client reads it itself


def test_the_cli_reads_them_and_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    done = subprocess.run(
        [sys.executable, "-m", "mlops", "promote"],
        env=clean_env(MLOPS_HOME=str(tmp_path), MLOPS_LOCK_URL_FILE=str(missing)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert str(missing) in done.stderr
    assert "Traceback" not in done.stderr
