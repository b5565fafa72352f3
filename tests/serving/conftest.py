"""A registered champion trained on the real feature table, and its model folder."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from pipelines.layout import DataLayout
from pipelines.storage import read_parquet_folder
from serving.bundle import Bundle, download_version
from training.config import CatBoostConfig, LightGBMConfig, TrackingConfig
from training.fit import FitConfig
from training.model import ModelConfig
from training.registry import GateConfig, promote
from training.train import TrainResult, train, train_trees


@dataclass(frozen=True)
class Champion:
    home: Path
    tracking_uri: str
    name: str
    version: str
    run_id: str


SMALL = (ModelConfig(width=16, depth=1, numeric_dim=2), FitConfig(epochs=1, batch_size=4096))
TREES = LightGBMConfig(rounds=200, early_stopping=20, learning_rate=0.1, threads=2)


def train_and_promote(home: Path, gate: GateConfig, seed: int = 0) -> tuple[str, str]:
    """(run id, version) of a small model on `home`'s feature table, registered and gated."""
    model, fit = SMALL
    tracking = TrackingConfig(home)
    result = train(DataLayout(home), tracking, model, replace(fit, seed=seed))
    holdout = read_parquet_folder(DataLayout(home).split("test"))
    decision = promote(tracking.client(), result.run_id, holdout, gate)
    return result.run_id, decision.version


@pytest.fixture(scope="session")
def champion(featured_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Champion:
    home = tmp_path_factory.mktemp("champion")
    shutil.copytree(featured_home / "data", home / "data")
    run_id, version = train_and_promote(home, GateConfig())
    return Champion(home, TrackingConfig(home).resolved_uri, "flight-delay", version, run_id)


def promoted(
    featured_home: Path,
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    train_run: Callable[[DataLayout, TrackingConfig], TrainResult],
) -> Champion:
    """A champion of another framework: `train_run` on a copy of the feature table, gated."""
    home = tmp_path_factory.mktemp(name)
    shutil.copytree(featured_home / "data", home / "data")
    tracking = TrackingConfig(home)
    result = train_run(DataLayout(home), tracking)
    holdout = read_parquet_folder(DataLayout(home).split("test"))
    decision = promote(tracking.client(), result.run_id, holdout, GateConfig())
    return Champion(home, tracking.resolved_uri, "flight-delay", decision.version, result.run_id)


@pytest.fixture(scope="session")
def trees_champion(featured_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Champion:
    """Gradient-boosted trees as the champion: served by the same server, which never looks
    at the framework."""
    pytest.importorskip("lightgbm", reason="the `lightgbm` extra: pip install -e '.[lightgbm]'")

    def boost(layout: DataLayout, tracking: TrackingConfig) -> TrainResult:
        return train_trees(layout, tracking, TREES)

    return promoted(featured_home, tmp_path_factory, "trees", boost)


@pytest.fixture(scope="session")
def jax_champion(featured_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Champion:
    """The network trained in JAX as the champion: the same server, no JAX in it."""
    pytest.importorskip("jax2onnx", reason="the `jax` extra: pip install -e '.[jax]'")
    from training.train import train_jax

    def fit(layout: DataLayout, tracking: TrackingConfig) -> TrainResult:
        return train_jax(layout, tracking, *SMALL)

    return promoted(featured_home, tmp_path_factory, "jax", fit)


@pytest.fixture(scope="session")
def catboost_champion(featured_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Champion:
    """CatBoost's trees as the champion: the same server, no CatBoost in it."""
    pytest.importorskip("catboost", reason="the `catboost` extra: pip install -e '.[catboost]'")
    config = CatBoostConfig(rounds=200, early_stopping=20, learning_rate=0.2, threads=2)

    def boost(layout: DataLayout, tracking: TrackingConfig) -> TrainResult:
        return train_trees(layout, tracking, config)

    return promoted(featured_home, tmp_path_factory, "catboost", boost)


def folder_of(champion: Champion, cache: Path) -> Bundle:
    client = TrackingConfig(champion.home).client()
    return download_version(client, champion.name, champion.version, cache)


@pytest.fixture(scope="session")
def model_folder(champion: Champion, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return folder_of(champion, tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def december(champion: Champion) -> pd.DataFrame:
    """Real December flights as the API takes them."""
    flights = read_parquet_folder(DataLayout(champion.home).month_partition("flights", "2013-12"))
    return flights


def as_requests(flights: pd.DataFrame) -> list[dict]:
    """Rows -> /predict's JSON flights (ISO times, no NaN)."""
    out = []
    for row in flights.itertuples(index=False):
        flight = {
            "carrier": row.carrier,
            "flight": int(row.flight),
            "tailnum": None if pd.isna(row.tailnum) else row.tailnum,
            "origin": row.origin,
            "dest": row.dest,
            "scheduled_departure": row.scheduled_departure.isoformat(),
        }
        if not pd.isna(row.distance):
            flight["distance"] = float(row.distance)
        out.append(flight)
    return out


def eventually(check: Callable[[], bool], within_s: float, what: str) -> None:
    """Until `check()` holds, at most `within_s` seconds; the failure names `what`."""
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, f"not within {within_s} s: {what}"
        time.sleep(0.1)


def wait_ready(get: Callable[[str], httpx.Response], within_s: float = 120) -> None:
    """Until /v2/health/ready says so: the first model loads after the server has started."""
    deadline = time.monotonic() + within_s
    while get("/v2/health/ready").status_code != 200:
        assert time.monotonic() < deadline, f"not ready in {within_s} s: {get('/model').text}"
        time.sleep(0.05)


@contextmanager
def ready_client(app: FastAPI, **options: Any) -> Iterator[TestClient]:
    """The app in-process (its lifespan running), once its first model has loaded."""
    with TestClient(app, **options) as client:
        wait_ready(client.get)
        yield client


class Server:
    """uvicorn in a thread, on a free port; entered once its first model has loaded."""

    def __init__(self, app) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        wait_ready(lambda path: httpx.get(base + path))
        return base

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
