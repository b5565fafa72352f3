"""Atomic writes, recovery from a crash between the two renames of a swap, and the lookup
tables' `.npz` format."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.layout import DataLayout
from pipelines.storage import (
    TMP_SUFFIX,
    StagedTable,
    exchange,
    new_generation,
    prune_generations,
    publish_generation,
    read_npz_table,
    recover,
    swap_in,
    write_bytes_atomic,
    write_npz_table,
    write_parquet_atomic,
)


def test_a_crash_between_renames_is_undone_on_the_next_run(tmp_path: Path) -> None:
    month = tmp_path / "flights" / "month=2013-01"
    write_parquet_atomic(pd.DataFrame({"a": [1, 2]}), month / "part-00000.parquet")
    trash = month.with_name(".trash-month=2013-01-0123abcd")
    month.rename(trash)  # the old partition moved aside, the new one never arrived
    recover(tmp_path)
    assert pd.read_parquet(month / "part-00000.parquet")["a"].tolist() == [1, 2]
    assert not trash.exists()


def test_a_staged_table_is_invisible_until_commit(tmp_path: Path) -> None:
    root = tmp_path / "flights"
    staged = StagedTable(root)
    staged.write(pd.DataFrame({"a": [1]}), "month=2013-01")
    assert not root.exists()
    staged.commit()
    assert (root / "month=2013-01" / "part-00000.parquet").exists()
    assert not staged.staging.exists()


def test_npz_tables_round_trip_without_pickle_and_byte_for_byte(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "origin": ["EWR", None, "JFK"],
            "tailnum": pd.Series([None, None, None], dtype=object),
            "seats": pd.array([149, pd.NA, 55], dtype="Int64"),
            "temp": [39.0, np.nan, -1.5],
            "time_hour": pd.to_datetime(["2013-01-01 05:00", None, "2013-12-31 23:00"]),
            "cancelled": [True, False, True],
        }
    )
    first = write_npz_table(frame, tmp_path / "a.npz")
    time.sleep(2.1)  # zip members carry a time (2 s steps): a fixed one, or bytes would differ
    second = write_npz_table(frame, tmp_path / "b.npz")
    assert first.read_bytes() == second.read_bytes()
    with np.load(first, allow_pickle=False) as archive:  # no member needs pickle
        assert all(archive[name].dtype != object for name in archive.files)
    back = read_npz_table(first)
    assert list(back.columns) == list(frame.columns)
    assert back["origin"].isna().tolist() == [False, True, False]
    assert back["origin"][[0, 2]].tolist() == ["EWR", "JFK"]
    assert back["tailnum"].isna().all()
    np.testing.assert_array_equal(back["seats"].to_numpy(), [149.0, np.nan, 55.0])
    np.testing.assert_array_equal(back["temp"].to_numpy(), frame["temp"].to_numpy())
    np.testing.assert_array_equal(  # stored in nanoseconds, whatever the frame's unit
        back["time_hour"].to_numpy("datetime64[ns]"), frame["time_hour"].to_numpy("datetime64[ns]")
    )
    assert back["cancelled"].tolist() == [True, False, True]


def test_a_killed_atomic_write_leaves_a_tmp_file_that_recover_removes(tmp_path: Path) -> None:
    target = tmp_path / "data" / "quarantine" / "flights" / "month=2013-01.parquet"
    write_parquet_atomic(pd.DataFrame({"a": [1]}), target)
    leftover = target.with_name(f".{target.name}.{'0' * 32}{TMP_SUFFIX}")
    leftover.write_bytes(b"half a parquet file")  # what a kill -9 inside `write` leaves
    recover(tmp_path / "data")
    assert not leftover.exists() and target.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux's")
def test_a_folder_is_exchanged_in_one_step_and_the_old_one_deleted(tmp_path: Path) -> None:
    final, staged = tmp_path / "month=2013-01", tmp_path / ".staging-month=2013-01-x"
    write_parquet_atomic(pd.DataFrame({"a": [1]}), final / "part-00000.parquet")
    write_parquet_atomic(pd.DataFrame({"a": [2]}), staged / "part-00000.parquet")
    assert exchange(staged, final)
    assert pd.read_parquet(final)["a"].tolist() == [2]
    assert pd.read_parquet(staged)["a"].tolist() == [1]
    write_parquet_atomic(pd.DataFrame({"a": [3]}), tmp_path / "next" / "part-00000.parquet")
    swap_in(tmp_path / "next", final)
    assert pd.read_parquet(final)["a"].tolist() == [3]
    assert sorted(p.name for p in tmp_path.iterdir()) == [staged.name, final.name]


def test_a_generation_is_published_by_one_link_and_old_ones_pruned(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path)
    made = []
    for number in range(4):
        generation = new_generation(layout.generations)
        write_bytes_atomic(str(number).encode(), generation / "feature_spec.json")
        made.append(generation)
        if number < 3:  # the last one is a build killed before its publication
            publish_generation(generation, layout.current)
    assert layout.spec.read_text() == "2"
    assert layout.pinned().generation == made[2].name
    assert prune_generations(layout.generations, layout.current) == [made[0], made[3]]
    assert sorted(p.name for p in layout.generations.iterdir()) == [made[1].name, made[2].name]
    pinned = layout.pinned()
    publish_generation(made[1], layout.current)  # a reader pinned before keeps its build
    assert pinned.spec.read_text() == "2" and layout.spec.read_text() == "1"


def test_generation_names_sort_in_creation_order_across_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Names read the clock once: a name stamped with one reading's second and a later
    reading's fraction sorted a generation made at x.999999 after one made at x+1.000001,
    and pruning then took the newer for the older (CI, stop 38)."""
    second = 1_796_000_000 * 10**9
    readings = iter([second - 1, second + 1, second + 10**9 - 1, second + 10**9 + 1])
    monkeypatch.setattr(time, "time_ns", lambda: next(readings))
    made = [new_generation(tmp_path).name for _ in range(4)]
    assert sorted(made) == made
