"""Zero training/serving skew: the API and the offline batch scorer agree on every test flight."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mlops.cli import app as cli
from pipelines.layout import DataLayout
from pipelines.storage import read_parquet_folder
from serving.app import create_app
from serving.bundle import Bundle
from serving.config import ServeConfig
from serving.manager import FolderSource

from .conftest import Champion, as_requests, folder_of, ready_client


def _mlops_predict(champion: Champion, source: Path, output: Path, model: Bundle):
    """`mlops predict` as a user runs it, on a local model folder."""
    command = ["--home", str(champion.home), "predict", "--input", str(source)]
    command += ["--output", str(output), "--model-dir", str(model.folder)]
    return CliRunner().invoke(cli, command)


@pytest.mark.parametrize(
    "made_by",
    [
        "champion",
        # the other frameworks in the long variant (`make test` stays inside its budget)
        pytest.param("trees_champion", marks=pytest.mark.slow),
        pytest.param("jax_champion", marks=pytest.mark.slow),
        pytest.param("catboost_champion", marks=pytest.mark.slow),
    ],
)
def test_predict_equals_batch_scoring_on_every_test_month_flight(
    made_by: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The network's champion, the network in JAX, LightGBM and CatBoost alike: the server
    never looks at the framework, and neither does the batch scorer."""
    champion: Champion = request.getfixturevalue(made_by)
    model_folder = folder_of(champion, tmp_path / "cache")
    layout = DataLayout(champion.home)
    months = [m for m in layout.months("flights") if m >= "2013-11"]
    flights = pd.concat(
        [read_parquet_folder(layout.month_partition("flights", m)) for m in months],
        ignore_index=True,
    )
    flights["row_id"] = np.arange(len(flights))
    source = tmp_path / "input"
    source.mkdir()
    bounds = np.linspace(0, len(flights), 4).astype(int)
    for i, (start, end) in enumerate(itertools.pairwise(bounds)):
        flights.iloc[start:end].to_parquet(source / f"part-{i}.parquet")

    result = _mlops_predict(champion, source, tmp_path / "scored", model_folder)
    assert result.exit_code == 0, result.output
    offline = read_parquet_folder(tmp_path / "scored").sort_values("row_id")
    assert len(offline) == len(flights)  # every flight of the test months
    assert not (tmp_path / "scored" / "rejected").exists()

    config = ServeConfig(poll_interval_s=0, max_request_rows=1_000, max_batch=1_000)
    online = []
    with ready_client(create_app(config, FolderSource(model_folder.folder))) as client:
        for start in range(0, len(flights), 1_000):
            body = {"flights": as_requests(flights.iloc[start : start + 1_000])}
            response = client.post("/predict", json=body)
            assert response.status_code == 200, response.text
            online += [p["delay_probability"] for p in response.json()["predictions"]]
    np.testing.assert_allclose(
        offline["delay_probability"].to_numpy(), np.array(online), rtol=0, atol=1e-6
    )
    assert (offline["model_version"] == model_folder.version).all()


def test_batch_scoring_quarantines_bad_rows_with_their_reason(
    champion: Champion, model_folder: Bundle, tmp_path: Path
) -> None:
    rows = pd.DataFrame(
        {
            "carrier": ["UA", "UA", "AA"],
            "flight": ["1545", "oops", "11"],
            "origin": ["EWR", "EWR", "JFK"],
            "dest": ["IAH", "IAH", "MIA"],
            "scheduled_departure": ["2013-12-01T05:15:00", "2013-12-01T05:15:00", "2013-13-01"],
        }
    )
    rows.to_csv(tmp_path / "flights.csv", index=False)
    result = _mlops_predict(champion, tmp_path / "flights.csv", tmp_path / "scored", model_folder)
    assert result.exit_code == 0, result.output
    assert "1 flights scored, 2 rejected" in result.output.replace("\n", " ")
    rejected = read_parquet_folder(tmp_path / "scored" / "rejected")
    assert sorted(rejected["reason"].str.split(":").str[0]) == ["flight", "scheduled_departure"]
