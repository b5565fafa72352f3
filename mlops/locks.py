"""One writer at a time over MLOPS_HOME's data: ingest, the feature build, `mlops run` and
every retrain hold the same lock.

Two backends, one contract:
- embedded defaults: `flock` on `MLOPS_HOME/writer.lock` (the kernel frees it when the holder
  dies, kill -9 included; every process on the machine, containers sharing the volume too);
- the stack (`MLOPS_LOCK_URL=postgresql://...`): a session-level advisory lock, shared by every
  scheduler, trainer and user that can reach the database, and freed with its connection.

Because a writer holds the lock from before its recovery to after its last commit, whatever
recovery finds (staging folders, `.tmp` files) is a leftover of a writer that is gone.

A PostgreSQL lock can be lost while held: a database restart or a cut connection frees it and
another scheduler may take it. `WriterLock.check()` asks the database whether this session
still holds it; the retrain calls it between its steps and right before the gate, so a retrain
that lost its lock stops there and leaves the month to the next tick. Releasing never raises:
an unlock that fails (the connection is already gone, and the lock with it) is logged, so it
cannot hide the outcome of the work it guarded.

The lock is re-entrant within a process: `mlops run` holds it and its ingest step takes it
again at no cost.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pipelines.errors import LockLostError, LockUnavailableError, WriterBusyError
from pipelines.redact import redact

if TYPE_CHECKING:
    from mlops.settings import Settings

logger = logging.getLogger(__name__)

WRITER_LOCK_KEY = 0x6D6C6F7073  # "mlops": one bigint for pg_try_advisory_lock
LOCK_FILE = "writer.lock"
POLL_S = 0.5  # how often a waiting writer tries again


def _describe(purpose: str) -> dict[str, Any]:
    return {
        "purpose": purpose,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _holder_line(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another writer (it did not say who)"
    return (
        f"`{holder.get('purpose', '?')}` (pid {holder.get('pid', '?')} on "
        f"{holder.get('host', '?')}, since {holder.get('since', '?')})"
    )


class WriterLock:
    """The held lock: `check()` raises `LockLostError` once it is no longer this process's."""

    def __init__(self, purpose: str, where: str) -> None:
        self.purpose = purpose
        self.where = where  # for messages: the lock file or the database
        self.depth = 0  # re-entrant holds within this process

    def check(self) -> None:
        """Raises `LockLostError` unless this process still holds the lock."""

    def held_by_other(self) -> dict[str, Any] | None:
        raise NotImplementedError

    def try_acquire(self) -> bool:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError


class FileWriterLock(WriterLock):
    """`flock` on a file under MLOPS_HOME; the holder's description is the file's content."""

    def __init__(self, purpose: str, home: Path, name: str = LOCK_FILE) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.path = home / name
        super().__init__(purpose, str(self.path))
        self._handle: IO[str] | None = None

    def try_acquire(self) -> bool:
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(_describe(self.purpose)))
        handle.flush()
        self._handle = handle
        return True

    def held_by_other(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text() or "null")
        except (OSError, ValueError):
            return None

    def check(self) -> None:
        # flock cannot be taken away from a live process; only the file can be: a lock on a
        # file that is no longer at its path guards nothing
        if self._handle is None:
            raise LockLostError(f"{self.where}: this process does not hold the data lock")
        try:
            same = self.path.stat().st_ino == os.fstat(self._handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            raise LockLostError(f"{self.where} was removed while this process held it")

    def release(self) -> None:
        if self._handle is None:
            return
        with suppress(OSError):
            self._handle.seek(0)
            self._handle.truncate()
            fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None


class PostgresWriterLock(WriterLock):
    """A session-level advisory lock; the holder is named by its connection's application_name.

    A watchdog thread asks the session every `WATCH_S` whether it is alive. When it is not
    (the database restarted, the connection was cut), the lock is marked lost, so the next
    `check()` stops the work, and the watchdog takes the lock again on a new session as soon
    as the database answers: the work that lost it is still running until that check, and
    holding the door shut meanwhile keeps a second writer from starting beside it.
    """

    WATCH_S = 1.0
    RETAKE_S = 0.2

    def __init__(self, purpose: str, url: str) -> None:
        self.dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)
        where = redact(url)
        super().__init__(purpose, where)
        self._name = f"mlops {purpose} pid {os.getpid()}"[:63]  # PostgreSQL's NAMEDATALEN
        self._connection: Any = None
        self._mutex = threading.Lock()  # one statement at a time on the session
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        self.lost: str | None = None  # why, once lost

    def _connect(self) -> Any:
        import psycopg

        try:
            return psycopg.connect(
                self.dsn,
                autocommit=True,
                connect_timeout=10,
                application_name=self._name,
                # a half-open connection (a host gone without a FIN) is found in about 30 s
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=4,
            )
        except psycopg.OperationalError as error:
            raise LockUnavailableError(
                f"{self.where}: cannot reach the data lock's database: {error}"
            ) from error

    def _take(self) -> Any:
        """A new session holding the lock, or None where another one holds it."""
        connection = self._connect()
        row = connection.execute("select pg_try_advisory_lock(%s)", (WRITER_LOCK_KEY,)).fetchone()
        if row and row[0]:
            return connection
        connection.close()
        return None

    def try_acquire(self) -> bool:
        connection = self._take()
        if connection is None:
            return False
        self._connection = connection
        self._watchdog = threading.Thread(target=self._watch, name="lock-watchdog", daemon=True)
        self._watchdog.start()
        return True

    def _holds(self) -> bool:
        """Whether the current session holds the lock; raises psycopg.Error if it is gone."""
        with self._mutex:
            row = self._connection.execute(
                "select count(*) from pg_locks where locktype = 'advisory' and granted"
                " and pid = pg_backend_pid() and classid = %s and objid = %s and objsubid = 1",
                (WRITER_LOCK_KEY >> 32, WRITER_LOCK_KEY & 0xFFFFFFFF),
            ).fetchone()
        return bool(row and row[0])

    def _watch(self) -> None:
        import psycopg

        while not self._stop.wait(self.WATCH_S):
            try:
                if self._holds():
                    continue
                reason = "the session no longer holds it"
            except psycopg.Error as error:
                reason = f"its session failed ({str(error).strip() or type(error).__name__})"
            self.lost = f"lost the data lock at {self.where}: {reason}"
            logger.error("%s; stopping before the next commit", self.lost)
            self._retake()
            return

    def _retake(self) -> None:
        """Hold the door: take the lock again as soon as the database answers."""
        while not self._stop.wait(self.RETAKE_S):
            try:
                connection = self._take()
            except LockUnavailableError:
                continue  # still down
            if connection is None:
                logger.error("another writer took the data lock at %s meanwhile", self.where)
                return
            with self._mutex:
                old, self._connection = self._connection, connection
            with suppress(Exception):
                old.close()
            logger.warning("took the data lock at %s again until this work stops", self.where)
            return

    def held_by_other(self) -> dict[str, Any] | None:
        with suppress(Exception), self._connect() as connection:
            row = connection.execute(
                "select a.application_name, a.client_addr, a.backend_start"
                " from pg_locks l join pg_stat_activity a using (pid)"
                " where l.locktype = 'advisory' and l.granted"
                " and l.classid = %s and l.objid = %s and l.objsubid = 1",
                (WRITER_LOCK_KEY >> 32, WRITER_LOCK_KEY & 0xFFFFFFFF),
            ).fetchone()
            if row:
                name, address, since = row
                found = re.fullmatch(r"mlops (.*) pid (\d+)", str(name or ""))
                return {
                    "purpose": found.group(1) if found else name or "?",
                    "pid": found.group(2) if found else "?",
                    "host": str(address) if address else "a local socket",
                    "since": since.isoformat(timespec="seconds") if since else "?",
                }
        return None

    def check(self) -> None:
        import psycopg

        if self.lost:
            raise LockLostError(self.lost)
        if self._connection is None:
            raise LockLostError(f"{self.where}: this process does not hold the data lock")
        try:
            held = self._holds()
        except psycopg.Error as error:
            self.lost = f"lost the data lock at {self.where}: its session failed ({error})"
            raise LockLostError(self.lost) from error
        if not held:
            self.lost = f"lost the data lock at {self.where}"
            raise LockLostError(self.lost)

    def release(self) -> None:
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join(timeout=15)
        if self._connection is None:
            return
        connection, self._connection = self._connection, None
        try:
            connection.execute("select pg_advisory_unlock(%s)", (WRITER_LOCK_KEY,))
        except Exception as error:
            # the session is gone, and its advisory lock with it; never mask the work's outcome
            logger.warning(
                "unlocking %s failed (%s): the lock died with its session", self.where, error
            )
        finally:
            with suppress(Exception):
                connection.close()


_held: WriterLock | None = None  # this process's, while held (re-entrant)


def _new_lock(settings: Settings, purpose: str) -> WriterLock:
    if settings.lock_url:
        return PostgresWriterLock(purpose, settings.lock_url)
    return FileWriterLock(purpose, settings.home)


@contextmanager
def writer_lock(
    settings: Settings,
    purpose: str,
    wait_s: float | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[WriterLock]:
    """Hold the data lock for `purpose` (say what the user ran, like "mlops data ingest").

    Waits up to `wait_s` (default: `settings.lock_wait_s`; 0 tries once) for another writer,
    telling `on_wait` once who holds it, then raises `WriterBusyError` naming the holder.
    """
    global _held
    if _held is not None:  # this process already holds it (`mlops run` -> its ingest step)
        _held.depth += 1
        try:
            yield _held
        finally:
            _held.depth -= 1
        return
    lock = _new_lock(settings, purpose)
    wait = settings.lock_wait_s if wait_s is None else wait_s
    deadline = time.monotonic() + wait
    told = False
    while not lock.try_acquire():
        holder = _holder_line(lock.held_by_other())
        if time.monotonic() >= deadline:
            waited = f"; waited {wait:.0f} s (MLOPS_LOCK_WAIT_S)" if wait else ""
            raise WriterBusyError(f"{lock.where}: {holder} is writing MLOPS_HOME's data{waited}")
        if not told and on_wait is not None:
            on_wait(f"waiting for {holder} to finish writing ({lock.where})")
            told = True
        time.sleep(POLL_S)
    _held = lock
    logger.info("took the data lock at %s for %s (pid %d)", lock.where, purpose, os.getpid())
    try:
        yield lock
    finally:
        _held = None
        lock.release()
        logger.info("released the data lock at %s (pid %d)", lock.where, os.getpid())
