"""The serving side installs without torch, Dask or the training code: it must not import them."""

from __future__ import annotations

import subprocess
import sys


def test_the_app_imports_neither_torch_nor_dask_nor_training() -> None:
    code = (
        "import sys, serving.app, serving.batch, serving.manager, mlops.serve_app;"
        "print(sorted({m.split('.')[0] for m in sys.modules}"
        " & {'torch', 'dask', 'distributed', 'training', 'pandera', 'optuna', 'typer'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
