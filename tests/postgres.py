"""A PostgreSQL cluster of the test's own, for the tests that restart the database.

The machine's cluster (127.0.0.1:5432) serves every other test; restarting it would cut them
too. This one is a real `postgres` from the same installation, started with `initdb` and
`pg_ctl` in a temporary folder on a free port, trust auth, and stopped with the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.processes import free_port


def _bindir() -> Path | None:
    """The folder of `pg_ctl` and `initdb`: PATH first, then Debian's versioned folders."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), reverse=True)
    return candidates[0].parent if candidates else None


class PrivatePostgres:
    """`start`, `stop` (`mode="immediate"` is a crash), `restart`; `url(database)`."""

    def __init__(self, root: Path, bindir: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.bindir = bindir
        self.port = free_port()
        self.log = root / "postgres.log"
        # initdb refuses to run as root: the cluster belongs to the `postgres` account then
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, tool: str, *args: str, check: bool = True) -> None:
        subprocess.run(
            [*self._as, str(self.bindir / tool), *args],
            check=check,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def init(self) -> None:
        if self._as:
            shutil.chown(self.root, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\nfsync = off\n"
            )

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart(self, mode: str = "immediate", down_s: float = 0.0) -> None:
        """Down (every connection cut), `down_s` seconds of outage, up again."""
        self.stop(mode)
        time.sleep(down_s)
        self.start()

    def url(self, database: str = "postgres", driver: str = "postgresql") -> str:
        return f"{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextmanager
def private_postgres(root: Path) -> Iterator[PrivatePostgres]:
    """A started private cluster under `root`; raises LookupError without PostgreSQL's tools."""
    bindir = _bindir()
    if bindir is None or not (bindir / "initdb").exists():
        raise LookupError("PostgreSQL's server tools (initdb, pg_ctl)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        raise LookupError("runuser (initdb refuses root)")
    root.mkdir(parents=True, exist_ok=True)
    cluster = PrivatePostgres(root, bindir)
    cluster.init()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop("immediate")
