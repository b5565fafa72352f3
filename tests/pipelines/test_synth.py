"""Synthetic flights: valid rows at any scale, spread over the year."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipelines.ingest import ingest
from pipelines.layout import DataLayout
from pipelines.rules import FLIGHT_NUMBER
from pipelines.sources import bundled_source
from pipelines.synth import synthesize


def test_synthetic_flights_ingest_cleanly_and_cover_the_year(tmp_path: Path) -> None:
    real = pd.read_csv(bundled_source("flights"))
    parts = synthesize(real, 20_000, tmp_path / "synth", seed=1)
    synth = pd.concat([pd.read_parquet(p) for p in parts])
    assert len(synth) == 20_000
    assert synth["month"].nunique() == 12
    assert (
        synth["carrier"]
        .value_counts(normalize=True)
        .sub(real["carrier"].value_counts(normalize=True))
        .abs()
        .max()
        < 0.02
    )  # resampled from the real distribution

    layout = DataLayout(tmp_path / "home")
    report = ingest(layout, {"flights": tmp_path / "synth"}).tables["flights"]
    assert (report.rows_in, report.kept, report.quarantined) == (20_000, 20_000, 0)
    assert len(layout.months("flights")) == 12


def test_synthesis_is_reproducible(tmp_path: Path) -> None:
    real = pd.read_csv(bundled_source("flights"), nrows=5_000)
    first = pd.read_parquet(synthesize(real, 1_000, tmp_path / "a", seed=5)[0])
    again = pd.read_parquet(synthesize(real, 1_000, tmp_path / "b", seed=5)[0])
    pd.testing.assert_frame_equal(first, again)


def test_every_synthetic_flight_is_itself(tmp_path: Path) -> None:
    """Unique by (carrier, number, origin, scheduled departure), as real flights are: the
    transform finds a flight's own event by it. 200,000 rows drawn from 50 flights put about
    11 copies of each on every day: the renumbering (10 numbers) and the shift past it."""
    real = pd.read_csv(bundled_source("flights"), nrows=50)
    parts = synthesize(real, 200_000, tmp_path / "synth", seed=2)
    synth = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    keys = ["carrier", "flight", "origin", "year", "month", "day", "sched_dep_time"]
    assert not synth.duplicated(keys).any()
    assert (synth["flight"] > 10_000 * 9).any()  # every renumbering used, then the shift
    assert synth["flight"].max() <= FLIGHT_NUMBER[1]
    layout = DataLayout(tmp_path / "home")
    report = ingest(layout, {"flights": tmp_path / "synth"}).tables["flights"]
    assert report.quarantined == 0
