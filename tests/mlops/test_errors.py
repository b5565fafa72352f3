"""Each designed failure ends in its exit code and one line, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from mlops.errors import EXIT_CODES, MappedErrors, exit_code
from pipelines.errors import MlopsError, RegistryUnavailableError
from serving.bundle import ModelRejectedError
from tests.processes import free_port
from training.export import ParityError


def mlops(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLOPS_"))}
    return subprocess.run(
        [sys.executable, "-m", "mlops", *args],
        env=clean | (env or {}),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_one_line(done: subprocess.CompletedProcess, code: int, words: str) -> None:
    assert done.returncode == code, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and words in errors[0], done.stderr


def test_training_without_a_feature_table(tmp_path: Path) -> None:
    done = mlops("--home", str(tmp_path / "h"), "train")
    assert_one_line(done, 2, "run `mlops data features` first")


def test_an_unreachable_mlflow_fails_in_seconds_naming_it(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    started = time.monotonic()
    done = mlops(
        "--home",
        str(tmp_path),
        "evaluate",
        env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"},
    )
    assert_one_line(done, 6, f"MLflow at http://127.0.0.1:{port} is unreachable")
    assert time.monotonic() - started < 60  # not MLflow's minutes of retries


def test_a_model_folder_whose_checksum_is_wrong_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    (folder / "contract").mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"not the model that was logged")
    (folder / "contract" / "feature_spec.json").write_text(json.dumps({"lookups": {}}))
    metadata = {"onnx_sha256": "0" * 64, "feature_spec_sha256": "0" * 64}
    metadata["decision_threshold"] = 0.5
    (folder / "MLmodel").write_text(yaml.safe_dump({"metadata": metadata}))
    (tmp_path / "in.csv").write_text("carrier\nUA\n")
    done = mlops(
        "--home",
        str(tmp_path / "h"),
        "predict",
        "--input",
        str(tmp_path / "in.csv"),
        "--output",
        str(tmp_path / "out"),
        "--model-dir",
        str(folder),
    )
    assert_one_line(done, 5, "sha256 of model.onnx")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("variable", ["MLOPS_SERVE__ADMIN_TOKEN", "MLFLOW_TRACKING_PASSWORD"])
def test_a_placeholder_secret_is_refused_at_startup(tmp_path: Path, variable: str) -> None:
    done = mlops("--home", str(tmp_path), "serve", env={variable: "change-me"})
    assert done.returncode == 2, done.stderr
    assert variable in done.stderr and "placeholder" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ParityError("ONNX differs from torch by more than 1e-05: {7: 0.1}"), 5),
        (ModelRejectedError("flight-delay v3: airports.npz is missing"), 5),
        (RegistryUnavailableError("MLflow at http://mlflow:5000 is unreachable"), 6),
    ],
)
def test_the_mapping_gives_each_failure_its_code_and_one_line(error: MlopsError, code: int) -> None:
    app = typer.Typer(cls=MappedErrors)

    @app.command()
    def fails() -> None:
        raise error

    @app.command()
    def other() -> None: ...

    result = CliRunner().invoke(app, ["fails"])
    assert result.exit_code == code == exit_code(error)
    assert result.output.strip() == f"error: {error}"


def test_every_code_is_documented_in_help() -> None:
    done = mlops("--help", env={"COLUMNS": "300"})
    for code, _ in set(EXIT_CODES.values()):
        assert f"{code} " in done.stdout
