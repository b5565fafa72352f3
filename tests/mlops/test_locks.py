"""One writer at a time over MLOPS_HOME's data: real processes contending for the real lock."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from mlops.locks import FileWriterLock, PostgresWriterLock, writer_lock
from mlops.settings import Settings
from pipelines.errors import LockLostError
from pipelines.layout import DataLayout
from tests.mlops.conftest import SMALL, SPLIT
from tests.processes import clean_env
from tests.serving.conftest import eventually


def mlops(home: Path, *args: str, **env: str) -> subprocess.Popen:
    """`mlops <args>` as a user starts it, in its own clean environment."""
    return subprocess.Popen(
        [sys.executable, "-m", "mlops", *args],
        env=clean_env(MLOPS_HOME=str(home), COLUMNS="200", **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finished(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def settings_for(home: Path, **values: object) -> Settings:
    return Settings(_env_file=None, home=home, **values)


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    with writer_lock(settings_for(tmp_path), "a test holding the lock"):
        code, output = finished(mlops(tmp_path, "data", "ingest", MLOPS_LOCK_WAIT_S="0"))
    assert code == 7, output
    assert "a test holding the lock" in output and "error:" in output, output
    assert "Traceback" not in output
    assert not (tmp_path / "data" / "bronze").exists()  # it wrote nothing


def test_a_second_writer_waits_for_the_first_then_writes(tmp_path: Path) -> None:
    with writer_lock(settings_for(tmp_path), "a test holding the lock"):
        waiting = mlops(tmp_path, "data", "ingest", "--until", "2013-01")
        assert waiting.stdout is not None
        first_line = waiting.stdout.readline()  # rich flushes each line it prints
        assert "waiting for `a test holding the lock`" in first_line, first_line
        time.sleep(1)
        assert waiting.poll() is None  # still waiting
        assert not (tmp_path / "data" / "bronze").exists()
    code, output = finished(waiting)
    assert code == 0, output
    assert DataLayout(tmp_path).months("flights") == ["2013-01"]


def test_the_scheduler_skips_its_tick_while_another_writer_writes(tmp_path: Path) -> None:
    with writer_lock(settings_for(tmp_path), "mlops data ingest"):
        # past the tick's wait for the lock (2 minutes by default): skipped
        tick = mlops(tmp_path, "schedule", "--once", MLOPS_SCHEDULE__LOCK_WAIT_S="2")
        code, output = finished(tick)
    assert code == 0, output
    assert "tick: skipped" in output, output


def test_the_lock_is_reentrant_within_a_process_and_free_after(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    with writer_lock(settings, "outer") as outer, writer_lock(settings, "inner") as inner:
        assert inner is outer
        outer.check()
    other = FileWriterLock("after", tmp_path)
    assert other.try_acquire()
    other.release()


def test_a_lock_file_removed_under_its_holder_is_reported_lost(tmp_path: Path) -> None:
    with writer_lock(settings_for(tmp_path), "holder") as lock:
        (tmp_path / "writer.lock").unlink()
        with pytest.raises(LockLostError, match="removed"):
            lock.check()


def _bronze(home: Path, months: list[str]) -> pd.DataFrame:
    layout = DataLayout(home)
    frames = [pd.read_parquet(layout.month_partition("flights", month)) for month in months]
    table = pd.concat(frames, ignore_index=True)
    return table.sort_values(list(table.columns)).reset_index(drop=True)


def test_overlapping_ingests_give_what_serial_ones_do(tmp_path: Path, ingested_home: Path) -> None:
    """The issue's reproduction: a second ingest started while the first one writes. Without
    the lock, the second one's recovery removed the first one's staging folders."""
    home = tmp_path / "home"
    first = mlops(home, "data", "ingest", "--until", "2013-02")
    time.sleep(1.5)
    second = mlops(home, "data", "ingest", "--since", "2013-02", "--until", "2013-03")
    for process in (first, second):
        code, output = finished(process)
        assert code == 0, output
    months = ["2013-01", "2013-02", "2013-03"]
    assert DataLayout(home).months("flights") == months
    pd.testing.assert_frame_equal(_bronze(home, months), _bronze(ingested_home, months))
    leftovers = [p for p in (home / "data").rglob("*") if p.name.startswith(".")]
    assert leftovers == []


# PostgreSQL: the lock of the stack


def test_the_advisory_lock_is_held_by_one_session_and_names_its_holder(
    restartable_postgres,
) -> None:
    url = restartable_postgres.url()
    first, second = PostgresWriterLock("mlops retrain", url), PostgresWriterLock("other", url)
    assert first.try_acquire()
    try:
        assert not second.try_acquire()
        holder = second.held_by_other()
        assert holder is not None and holder["purpose"] == "mlops retrain", holder
        first.check()
    finally:
        first.release()
    assert second.try_acquire()
    second.release()


def test_a_database_restart_loses_the_lock_and_the_holder_takes_it_back(
    restartable_postgres,
) -> None:
    """After a restart the lock is lost for the work that held it (check raises), and its
    watchdog holds the door until that work stops: a second writer cannot start meanwhile."""
    url = restartable_postgres.url()
    holder = PostgresWriterLock("mlops retrain", url)
    assert holder.try_acquire()
    try:
        restartable_postgres.restart(mode="immediate", down_s=2)
        eventually(lambda: holder.lost is not None, 30, "the watchdog to see the restart")
        with pytest.raises(LockLostError, match="lost the data lock"):
            holder.check()
        # back up: the watchdog took the lock again on a new session
        other = PostgresWriterLock("a second scheduler", url)

        def taken_back() -> bool:
            found = other.held_by_other()
            return found is not None and found["purpose"] == "mlops retrain"

        eventually(taken_back, 30, "the holder to take the lock back")
        assert not other.try_acquire()
        with pytest.raises(LockLostError):  # still lost for the work that held it
            holder.check()
    finally:
        holder.release()  # the unlock never raises, whatever the session's state
    assert other.try_acquire()
    other.release()


def test_releasing_a_lock_whose_database_is_down_does_not_raise(restartable_postgres) -> None:
    holder = PostgresWriterLock("mlops retrain", restartable_postgres.url())
    assert holder.try_acquire()
    restartable_postgres.stop("immediate")
    started = time.monotonic()
    holder.release()
    assert time.monotonic() - started < 20


# Whole retrains: the lock's log lines are the markers of when each one held it

HELD = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*(took|released) the data lock .*\(pid (\d+)\)"
)


def held_intervals(*logs: str) -> list[tuple[datetime, datetime, str]]:
    """(took, released, pid) for every hold in these logs; a hold never released is an error."""
    taken: dict[str, datetime] = {}
    intervals = []
    for line in "\n".join(logs).splitlines():
        found = HELD.search(line)
        if not found:
            continue
        at = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f")
        if found.group(2) == "took":
            taken[found.group(3)] = at
        else:
            intervals.append((taken.pop(found.group(3)), at, found.group(3)))
    assert not taken, f"holds never released: {taken}"
    return sorted(intervals)


def assert_no_overlap(intervals: list[tuple[datetime, datetime, str]]) -> None:
    for before, after in itertools.pairwise(intervals):
        assert before[1] <= after[0], f"two writers at once: {before} and {after}"


def log_of(output: str) -> str:
    """The log file a batch command named at its end ("log: PATH")."""
    found = re.search(r"log: (\S+)", output)
    return Path(found.group(1)).read_text() if found else ""


@pytest.mark.slow
def test_a_user_retrain_beside_a_scheduler_tick_takes_turns(
    home_with_champion: Path, ingested_home: Path
) -> None:
    home = home_with_champion
    env = SMALL | SPLIT
    user = mlops(home, "retrain", **env)
    time.sleep(1.5)
    tick = mlops(home, "schedule", "--once", **env)
    (user_code, user_output), (tick_code, tick_output) = finished(user, 900), finished(tick, 900)
    assert user_code == 0, user_output
    assert tick_code == 0, tick_output
    intervals = held_intervals(log_of(user_output), tick_output)
    skipped = "tick: skipped" in tick_output
    assert len(intervals) == (1 if skipped else 2), intervals
    assert_no_overlap(intervals)
    # whatever the order, bronze is what serial runs give: each new month whole, once
    months = DataLayout(home).months("flights")
    assert months[-1] == ("2013-11" if skipped else "2013-12"), months
    pd.testing.assert_frame_equal(_bronze(home, months), _bronze(ingested_home, months))


@pytest.mark.slow
def test_a_database_restart_mid_retrain_never_lets_two_retrains_overlap(
    home_with_champion: Path, restartable_postgres
) -> None:
    """Scheduler A retrains holding the advisory lock; PostgreSQL restarts; scheduler B ticks
    every two seconds. A stops before its gate ("lock lost"); B retrains after A let go."""
    home = home_with_champion
    env = SMALL | SPLIT | {"MLOPS_LOCK_URL": restartable_postgres.url()}
    first = mlops(home, "schedule", "--once", **env)
    probe = PostgresWriterLock("probe", restartable_postgres.url())
    eventually(lambda: probe.held_by_other() is not None, 120, "scheduler A to take the lock")
    time.sleep(3)  # A is ingesting
    restartable_postgres.restart(mode="immediate", down_s=3)
    outputs = []
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        code, output = finished(mlops(home, "schedule", "--once", **env), 900)
        assert code == 0, output
        outputs.append(output)
        if "tick: skipped" not in output:
            break
        time.sleep(2)
    first_code, first_output = finished(first, 900)
    assert first_code == 0, first_output
    assert "tick: lock lost" in first_output, first_output
    assert "took the data lock" in first_output and "again" in first_output, first_output
    last = outputs[-1]
    assert "tick: promoted" in last or "tick: kept the champion" in last, last
    assert_no_overlap(held_intervals(first_output, *outputs))
    client = MlflowClient(f"sqlite:///{(home / 'mlflow.db').resolve()}")
    experiment = client.get_experiment_by_name("flight-delay").experiment_id
    gated = client.search_runs([experiment], "tags.gate_decision != ''")
    months = [
        run.data.tags.get("retrain_month") for run in gated if "retrain_month" in run.data.tags
    ]
    assert len(months) == len(set(months)) == 1, months  # one gate, by B
