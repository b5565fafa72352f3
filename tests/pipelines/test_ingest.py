"""Ingest: quarantine accounting, idempotent re-ingest, atomic writes, clear source errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet
import pytest

from pipelines.errors import SourceError
from pipelines.ingest import MonthWindow, ingest
from pipelines.layout import DataLayout
from pipelines.sources import bundled_source
from pipelines.storage import read_parquet_folder


@pytest.fixture(scope="module")
def raw_flights() -> pd.DataFrame:
    """The first rows of the real flights file, as text."""
    return pd.read_csv(bundled_source("flights"), dtype=str, nrows=400, keep_default_na=False)


CORRUPTIONS = {  # row -> (column, value, what the reason must name)
    0: ({"month": "2", "day": "30"}, "year-month-day is not a date"),
    1: ({"distance": "-5"}, "distance"),
    2: ({"carrier": "ZZ"}, "carrier: not a known code"),
    3: ({"origin": ""}, "origin"),
    4: ({"dep_delay": "abc"}, "dep_delay: not a number (abc)"),
    5: ({"sched_dep_time": "2575"}, "sched_dep_time: not a clock time HHMM"),
    6: ({"year": "twenty"}, "year: not an integer"),
    7: ({"tailnum": "n 12!"}, "tailnum"),
    8: ({"distance": "1.5e400", "arr_delay": "99999"}, "arr_delay"),
}


def _write_corrupted(raw: pd.DataFrame, path: Path) -> Path:
    bad = raw.copy()
    for row, (values, _) in CORRUPTIONS.items():
        for column, value in values.items():
            bad.loc[row, column] = value
    bad.to_csv(path, index=False)
    return path


def _ingest_csv(layout: DataLayout, flights: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Ingest `flights` written as CSV; returns the bronze flights."""
    flights.to_csv(path, index=False)
    ingest(layout, {"flights": path})
    return _bronze(layout)


def _bronze(layout: DataLayout) -> pd.DataFrame:
    return read_parquet_folder(layout.bronze("flights"))


def test_quarantine_accounting_is_exact(tmp_path: Path, raw_flights: pd.DataFrame) -> None:
    layout = DataLayout(tmp_path / "home")
    source = _write_corrupted(raw_flights, tmp_path / "flights.csv")
    report = ingest(layout, {"flights": source}).tables["flights"]

    assert report.rows_in == len(raw_flights) == report.kept + report.quarantined
    assert report.quarantined == len(CORRUPTIONS)
    quarantined = read_parquet_folder(layout.quarantine("flights"))
    assert len(quarantined) == len(CORRUPTIONS)
    assert len(_bronze(layout)) == len(raw_flights) - len(CORRUPTIONS)
    assert quarantined["reason"].str.len().gt(0).all()
    by_flight = quarantined.set_index("flight")["reason"]
    for row, (_, expected) in CORRUPTIONS.items():
        assert expected in by_flight[raw_flights.loc[row, "flight"]], row
    assert set(quarantined["source"]) == {str(source)}
    assert (layout.quarantine("flights") / "undated.parquet").exists()  # the row with no year


def test_reingest_replaces_a_month_instead_of_adding_to_it(
    tmp_path: Path, raw_flights: pd.DataFrame
) -> None:
    layout = DataLayout(tmp_path / "home")
    source = tmp_path / "flights.csv"
    first = _ingest_csv(layout, raw_flights, source)
    files = sorted(layout.bronze("flights").rglob("*.parquet"))
    ingest(layout, {"flights": source})
    pd.testing.assert_frame_equal(_bronze(layout), first)
    assert sorted(layout.bronze("flights").rglob("*.parquet")) == files

    raw_flights.iloc[:50].to_csv(source, index=False)
    ingest(layout, {"flights": source})
    assert len(_bronze(layout)) == 50


def test_an_interrupted_run_leaves_the_previous_output_intact(
    tmp_path: Path, raw_flights: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = DataLayout(tmp_path / "home")
    source = tmp_path / "flights.csv"
    before = _ingest_csv(layout, raw_flights, source)

    real_write = pyarrow.parquet.write_table
    calls = {"n": 0}

    def dies_midway(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # after the dimension tables, in the middle of the flights
            raise KeyboardInterrupt("power cut")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(pyarrow.parquet, "write_table", dies_midway)
    raw_flights.iloc[:10].to_csv(source, index=False)
    with pytest.raises(KeyboardInterrupt):
        ingest(layout, {"flights": source})
    monkeypatch.undo()

    pd.testing.assert_frame_equal(_bronze(layout), before)
    leftovers = [p for p in layout.root.rglob("*") if p.name.startswith((".staging", ".trash"))]
    assert leftovers == []


def test_a_file_that_is_not_csv_stops_the_run_naming_it(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path / "home")
    source = tmp_path / "flights.csv"
    source.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(SourceError) as error:
        ingest(layout, {"flights": source})
    assert str(source) in str(error.value)
    assert not layout.root.exists() or not any(layout.root.rglob("*.parquet"))


def test_a_missing_column_stops_the_run_naming_file_and_column(
    tmp_path: Path, raw_flights: pd.DataFrame
) -> None:
    layout = DataLayout(tmp_path / "home")
    ingest(layout, {"flights": _write_corrupted(raw_flights, tmp_path / "ok.csv")})
    before = sorted(p.relative_to(layout.root) for p in layout.root.rglob("*"))
    source = tmp_path / "flights.csv"
    raw_flights.drop(columns=["distance"]).to_csv(source, index=False)
    with pytest.raises(SourceError) as error:
        ingest(layout, {"flights": source})
    assert error.value.column == "distance"
    assert str(source) in str(error.value) and "distance" in str(error.value)
    assert sorted(p.relative_to(layout.root) for p in layout.root.rglob("*")) == before


def test_until_takes_in_only_the_months_up_to_it(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path / "home")
    report = ingest(layout, window=MonthWindow(until="2013-02"))
    flights = report.tables["flights"]
    assert layout.months("flights") == ["2013-01", "2013-02"]
    assert layout.months("weather") == ["2013-01", "2013-02"]
    assert flights.rows_in == flights.kept + flights.quarantined
    assert flights.rows_read == flights.rows_in + flights.out_of_window == 336_776
    later = ingest(layout, window=MonthWindow(since="2013-03", until="2013-03"))
    assert layout.months("flights") == ["2013-01", "2013-02", "2013-03"]
    assert later.tables["flights"].kept == len(
        read_parquet_folder(layout.month_partition("flights", "2013-03"))
    )
