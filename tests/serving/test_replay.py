"""`mlops replay` against the real `mlops serve`: November's bronze as events, each flight
predicted at its scheduled departure on the replay clock, and the realized ROC-AUC it prints
equal to the model's on the same flights scored offline (the store gives the offline
features). The server's own realized quality (/metrics, joined as the arrivals came in) equals
`mlops monitor`'s from its prediction log and the definition's, from bronze's labels."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipelines.events import scheduled_arrivals
from pipelines.layout import DataLayout
from pipelines.metrics import roc_auc
from pipelines.rules import DELAYED_MIN
from pipelines.storage import read_parquet_folder
from pipelines.transform import RAW_INPUTS
from serving.bundle import Bundle
from serving.runtime import LoadedModel
from tests.processes import clean_env, mlops_serve
from tests.serving.test_quality import pairwise_auc

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
        replayed = subprocess.run(
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
        online = realized_online(served.base, wait=replayed.returncode == 0)
    output = replayed.stdout + replayed.stderr  # the CLI's console writes to stderr
    assert replayed.returncode == 0, output[-4000:]
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

    # what the server joined online: every flight that landed, once (a flight to an airport
    # whose time zone is unknown has a label in bronze but no arrival event)
    airports = read_parquet_folder(DataLayout(home).bronze("airports"))
    arrived = labelled.assign(
        arrived_at=scheduled_arrivals(labelled, airports) + labelled["arr_delay"].to_numpy()
    )
    landed = int(arrived["arrived_at"].notna().sum())
    assert landed > 0.9 * len(labelled)
    assert sum(online["mlops_matured_predictions_total"].values()) == landed
    monitored = subprocess.run(
        [sys.executable, "-m", "mlops", "monitor", "--json", "--figure", str(tmp_path / "q.png")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert monitored.returncode == 0, monitored.stderr[-4000:]
    report = json.loads(monitored.stdout)
    assert report["matured"] == landed and (tmp_path / "q.png").stat().st_size > 10_000
    assert list(report["runs"]) == [str(model_folder.version)]  # its daily series, in MLflow
    # a day per day of arrival, each with its output PSI against the holdout the server
    # recorded beside the log
    days = [d for d in report["daily"] if d["predictions"] > 100]
    assert len(days) >= 28 and all(np.isfinite(d["output_psi"]) for d in days)
    windows = {(w["version"], w["window"]): w for w in report["windows"]}
    assert set(windows) == {(str(model_folder.version), w) for w in ("24h", "168h")}

    # the definition, from the log and bronze: pairwise ROC-AUC, the mean log loss
    logged = read_parquet_folder(DataLayout(home).predictions)
    assert len(logged) == len(november)  # every prediction answered is in the log
    arrived = labelled.assign(
        arrived_at=scheduled_arrivals(
            labelled, read_parquet_folder(DataLayout(home).bronze("airports"))
        )
        + labelled["arr_delay"].to_numpy()
    )
    keys = ["carrier", "flight", "origin", "scheduled_departure"]
    for frame in (logged, arrived):
        frame["scheduled_departure"] = frame["scheduled_departure"].astype("datetime64[ns]")
    pairs = logged[[*keys, "delay_probability"]].merge(
        arrived[[*keys, "arr_delay", "arrived_at"]], on=keys
    )
    newest = pairs["arrived_at"].max()
    for (version, window), figures in windows.items():
        inside = pairs[pairs["arrived_at"] > newest - int(window[:-1]) * 60]
        y = inside["arr_delay"].to_numpy() > DELAYED_MIN
        p = inside["delay_probability"].to_numpy("float64")
        definition = {
            "predictions": len(inside),
            "roc_auc": pairwise_auc(y, p),
            "log_loss": -np.mean(np.where(y, np.log(p), np.log1p(-p))),
            "mean_probability": p.mean(),
            "delay_rate": y.mean(),
        }
        for name, value in definition.items():
            served_value = online[f"mlops_realized_{name}"][(version, window)]
            assert abs(figures[name] - value) < 1e-9, (version, window, name, figures[name], value)
            assert abs(served_value - value) < 1e-9, (version, window, name, served_value, value)


def realized_online(base: str, wait: bool) -> dict[str, dict]:
    """The server's realized figures, once its matured count stops moving (the prediction log
    hands its tables to the join every flush): name -> (version, window) or version -> value."""
    previous, deadline = None, time.monotonic() + 60
    while True:
        families = {
            family.name: family
            for family in text_string_to_metric_families(httpx.get(f"{base}/metrics").text)
        }
        out: dict[str, dict] = {}
        for name, family in families.items():
            for sample in family.samples:
                if name.startswith("mlops_realized_") and "window" in sample.labels:
                    key = (sample.labels["version"], sample.labels["window"])
                    out.setdefault(sample.name, {})[key] = sample.value
                elif sample.name == "mlops_matured_predictions_total":
                    out.setdefault(sample.name, {})[sample.labels["version"]] = sample.value
        matured = sum(out.get("mlops_matured_predictions_total", {}).values())
        if not wait or (matured and matured == previous) or time.monotonic() > deadline:
            return out
        previous = matured
        time.sleep(2.5)  # past the log's flush (1 s)
