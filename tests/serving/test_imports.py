"""The serving side installs without torch, Dask, pyarrow or the training code: it must not
import them, and a model must load and answer with them unavailable."""

from __future__ import annotations

import subprocess
import sys

from serving.bundle import Bundle

TRAINING_SIDE = ("torch", "dask", "distributed", "training", "pandera", "optuna", "typer")
# The settings' sections are the training configs: plain dataclasses, copied into the image.
ALLOWED = ("training", "training.config")


def test_the_app_imports_neither_torch_nor_dask_nor_training() -> None:
    # (pyarrow is imported by pandas itself where it is installed: the test below blocks it)
    code = (
        "import sys, serving.app, serving.batch, serving.manager, mlops.serve_app;"
        f"print(sorted({{m for m in sys.modules if m.split('.')[0] in {set(TRAINING_SIDE)!r}}}"
        f" - {set(ALLOWED)!r}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_model_loads_and_scores_where_pyarrow_and_torch_cannot_be_imported(
    model_folder: Bundle,
) -> None:
    # A None entry in sys.modules makes `import x` raise ImportError, as if x were not installed
    blocked = ("pyarrow", *TRAINING_SIDE)
    code = f"""
import sys
for name in {blocked!r}:
    sys.modules[name] = None
from pathlib import Path
from serving.bundle import read_bundle
from serving.runtime import LoadedModel
model = LoadedModel.load(read_bundle(Path({str(model_folder.folder)!r})))
row = dict(carrier="UA", flight=1545, tailnum="N24211", origin="EWR", dest="IAH",
           scheduled_departure=__import__("datetime").datetime(2013, 12, 1, 5, 15), distance=1400.0)
print(float(model.score_rows([row]).probabilities[0]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert 0.0 < float(done.stdout.strip().splitlines()[-1]) < 1.0


def test_mlops_serve_binds_before_mlflow_dask_or_pandera_is_imported(tmp_path) -> None:
    """What `mlops serve` runs before its socket is bound: the CLI, the source's description and
    the app. MLflow (most of a second to import), Dask and pandera would all come before the
    server is live; MLflow is imported by the first poll, off the way to liveness."""
    from tests.processes import clean_env

    code = (
        "import sys; import mlops.cli; from mlops.configs import model_source;"
        "from mlops.serve_app import create; from mlops.settings import Settings;"
        "model_source(Settings()).describe(); create();"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'mlflow', 'dask', 'pandera'}))"
    )
    env = clean_env(MLOPS_HOME=str(tmp_path), MLFLOW_TRACKING_URI="http://127.0.0.1:1")
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
