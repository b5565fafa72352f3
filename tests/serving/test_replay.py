"""`mlops replay` against the real `mlops serve`: November's bronze as events, each flight
predicted at its scheduled departure on the replay clock, and the realized ROC-AUC it prints
equal to the model's on the same flights scored offline (the store gives the offline
features)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.layout import DataLayout
from pipelines.rules import DELAYED_MIN
from pipelines.storage import read_parquet_folder
from pipelines.transform import RAW_INPUTS
from serving.bundle import Bundle
from serving.runtime import LoadedModel
from tests.processes import clean_env, mlops_serve
from training.metrics import roc_auc

from .conftest import Champion

TOKEN = "replay-test-token"


@pytest.mark.slow
@pytest.mark.parametrize(
    "store_since",
    [
        "2013-11-01T00:00",  # the store takes over at the replay's start
        # a store behind the start (the stack's starts from a build months older): it knows
        # none of the first day's flights, whose schedules were published before the start
        "2013-10-20T00:00",
    ],
)
def test_a_replayed_month_scores_as_the_offline_table(
    champion: Champion, model_folder: Bundle, tmp_path: Path, store_since: str
) -> None:
    home = tmp_path / "home"
    shutil.copytree(champion.home / "data" / "bronze", home / "data" / "bronze")
    env = clean_env(
        MLOPS_HOME=str(home), MLOPS_EVENTS__TOKEN=TOKEN, MLOPS_EVENTS__SINCE=store_since
    )
    with mlops_serve("--model-dir", str(model_folder.folder), env=env) as served:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "mlops",
                "replay",
                "--since",
                "2013-11",
                "--until",
                "2013-11",
                "--url",
                served.base,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    output = done.stdout + done.stderr  # the CLI's console writes to stderr
    assert done.returncode == 0, output[-4000:]
    found = re.search(r"realized on ([\d,]+) arrivals: ROC-AUC ([\d.]+)", output)
    assert found, output[-4000:]
    assert re.search(r"[\d,]+ accepted, 0 already in, 0 refused", output), output[-4000:]

    flights = read_parquet_folder(DataLayout(home).bronze("flights"))
    when = flights["scheduled_departure"]
    november = flights[(when >= pd.Timestamp("2013-11-01")) & (when < pd.Timestamp("2013-12-01"))]
    labelled = november[november["arr_delay"].notna()]
    scored = LoadedModel.load(model_folder).score_frame(labelled[RAW_INPUTS])
    labels = (labelled["arr_delay"].to_numpy() > DELAYED_MIN).astype("float64")
    expected = roc_auc(labels, scored.probabilities)
    assert int(found.group(1).replace(",", "")) == len(labelled)
    assert abs(float(found.group(2)) - expected) < 1e-4, (found.group(2), expected)
    assert np.isfinite(expected)
