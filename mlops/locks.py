"""One retrain at a time: a PostgreSQL advisory lock shared by every scheduler that can reach
the database, or a file lock under MLOPS_HOME for a single machine."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RETRAIN_LOCK_KEY = 0x6D6C6F7073  # "mlops": one bigint for pg_try_advisory_lock


@contextmanager
def retrain_lock(url: str, home: Path) -> Iterator[bool]:
    """Yields whether this process holds the lock; never waits for it.

    A session-level advisory lock dies with its connection, so a scheduler that crashes
    mid-retrain frees the lock for the next tick of another one.
    """
    if url:
        import psycopg

        dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(dsn, autocommit=True) as connection:
            row = connection.execute(
                "select pg_try_advisory_lock(%s)", (RETRAIN_LOCK_KEY,)
            ).fetchone()
            held = bool(row and row[0])
            try:
                yield held
            finally:
                if held:
                    connection.execute("select pg_advisory_unlock(%s)", (RETRAIN_LOCK_KEY,))
        return
    home.mkdir(parents=True, exist_ok=True)
    with (home / "retrain.lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
