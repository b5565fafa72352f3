"""Atomic writes and recovery from a crash between the two renames of a swap."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipelines.storage import StagedTable, recover, write_parquet_atomic


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
