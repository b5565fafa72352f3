"""Passwords in URIs never reach the console, the logs or an HTTP answer: the real CLI, run as a
user runs it, against stores that cannot be reached (so every path that quotes the URI runs)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.pipelines.test_redact import PASSWORD
from tests.processes import clean_env, mlops_serve

# Nothing listens on port 1: each store fails fast with its URI in the error
TRACKING = f"http://reader:{PASSWORD}@127.0.0.1:1"
DATABASE = f"postgresql://mlops:{PASSWORD}@127.0.0.1:1/x"


def _logs(home: Path) -> str:
    return "".join(p.read_text() for p in (home / "logs").glob("*.log"))


def test_a_failed_command_does_not_print_the_password(tmp_path: Path) -> None:
    env = clean_env(
        MLOPS_HOME=str(tmp_path),
        MLFLOW_TRACKING_URI=TRACKING,
        MLOPS_OPTUNA_STORAGE=DATABASE,
        MLOPS_LOCK_URL=DATABASE,
    )
    done = subprocess.run(
        [sys.executable, "-m", "mlops", "-v", "promote"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 6, output  # MLflow is unreachable: the error quotes its URI
    assert "reader:***@127.0.0.1:1" in output
    assert PASSWORD not in output + _logs(tmp_path)


def test_the_server_neither_logs_nor_answers_the_password(tmp_path: Path) -> None:
    env = clean_env(MLOPS_HOME=str(tmp_path), MLFLOW_TRACKING_URI=TRACKING)
    with mlops_serve(env=env, cwd=tmp_path, until="live") as served:
        # the registry is unreachable: readiness names the source it is loading from
        deadline = time.monotonic() + 30
        while (ready := httpx.get(f"{served.base}/v2/health/ready")).status_code != 503:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        answers = ready.text + httpx.get(f"{served.base}/model").text
    assert "reader:***@127.0.0.1:1" in served.output
    assert PASSWORD not in served.output + answers
