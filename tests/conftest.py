"""Shared fixtures: the real bundled data, ingested once per session."""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest

from pipelines.features import build_features_pandas
from pipelines.ingest import ingest, local_time
from pipelines.layout import DataLayout
from pipelines.schemas import SCHEMAS, validate
from pipelines.sources import bundled_source, read_chunks
from pipelines.splits import SplitPlan

from .processes import Redis


def load_bundled(table: str) -> pd.DataFrame:
    """A bundled table, parsed and validated the way ingest does it (in memory)."""
    schema = SCHEMAS[table]
    raw = pd.concat([c.frame for c in read_chunks(bundled_source(table), schema.columns)])
    kept = validate(schema, raw).kept
    if table == "flights":
        kept["scheduled_departure"] = local_time(kept, kept["sched_dep_time"])
    if table == "weather":
        kept["time_hour"] = local_time(kept, hour="hour")
    return kept


@pytest.fixture(scope="session")
def bundled() -> dict[str, pd.DataFrame]:
    return {t: load_bundled(t) for t in ("flights", "weather", "planes", "airports", "airlines")}


@pytest.fixture(scope="session")
def ingested_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLOPS_HOME with the whole real data set ingested into bronze (read-only for tests)."""
    home = tmp_path_factory.mktemp("home")
    ingest(DataLayout(home))
    return home


@pytest.fixture(scope="session")
def featured_home(ingested_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real feature table, spec and lookups (tests that train write their MLflow state
    here under their own experiment and model names)."""
    home = tmp_path_factory.mktemp("featured")
    shutil.copytree(ingested_home / "data" / "bronze", home / "data" / "bronze")
    build_features_pandas(DataLayout(home), SplitPlan())
    return home


POSTGRES = os.environ.get("MLOPS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def postgres_database() -> Iterator[Callable[[str], str]]:
    """Makes fresh databases on the real PostgreSQL (dropped afterwards); skips without one."""
    psycopg = pytest.importorskip("psycopg", reason="needs psycopg: pip install -e '.[postgres]'")
    try:
        admin = psycopg.connect(POSTGRES, connect_timeout=3, autocommit=True)
    except psycopg.OperationalError as error:
        pytest.skip(
            f"needs PostgreSQL at {POSTGRES} (trust auth, user postgres, database test; "
            f"set MLOPS_TEST_POSTGRES to use another): {error}"
        )
    created: list[str] = []

    def make(purpose: str) -> str:
        name = f"mlops_{purpose}_{uuid.uuid4().hex[:8]}"
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return POSTGRES.rsplit("/", 1)[0] + f"/{name}"

    yield make
    with admin.cursor() as cursor:
        for name in created:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def restartable_postgres(tmp_path_factory: pytest.TempPathFactory):
    """A PostgreSQL cluster of this test's own (tests/postgres.py), which it may restart or
    crash; skips where PostgreSQL's server tools or psycopg are missing."""
    pytest.importorskip("psycopg", reason="needs psycopg: pip install -e '.[postgres]'")
    from tests.postgres import private_postgres

    root = Path("/tmp") / f"mlops-pg-{uuid.uuid4().hex[:8]}"  # short: the socket path's limit
    try:
        with private_postgres(root) as cluster:
            yield cluster
    except LookupError as missing:
        pytest.skip(f"needs {missing} to run a PostgreSQL cluster of the test's own")
    finally:
        shutil.rmtree(root, ignore_errors=True)


# CI's clock (`.ci/run` sets it): past this many seconds of the session, a long variant
# (`slow`) that has not started is skipped, saying so, rather than CI running out of its time
# on a slower machine; the fast tests always run
BUDGET_S = float(os.environ.get("MLOPS_TEST_BUDGET_S", "0") or 0)
SESSION_START = time.monotonic()


def pytest_runtest_setup(item: pytest.Item) -> None:
    elapsed = time.monotonic() - SESSION_START
    if BUDGET_S and item.get_closest_marker("slow") is not None and elapsed > BUDGET_S:
        pytest.skip(
            f"CI's time budget is spent ({elapsed:.0f} s of MLOPS_TEST_BUDGET_S={BUDGET_S:.0f}):"
            " `MLOPS_TEST_ALL=1 make test` runs it"
        )


@pytest.fixture(autouse=True)
def _no_environment_leaks() -> Iterator[None]:
    """Each test starts from the environment the session started with: an in-process CLI call
    exports its settings (MLflow's client reads its credentials from the environment), and a
    later test's subprocesses (torchrun ranks, tuning workers) inherited a dead server's URI."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
    # Read only: a test that left MLflow's global URI set fails here, not a later one that
    # inherited it (the suite never sets MLflow's global state itself, to clear it or else)
    tracking = sys.modules.get("mlflow.tracking._tracking_service.utils")
    leaked = getattr(tracking, "_tracking_uri", None)
    if leaked is not None:
        pytest.fail(f"MLflow's global tracking URI was left set to {leaked}")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Redis]:
    """A redis-server of the test's own, on a free port: stopping it is real."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("needs redis-server and redis-cli (Debian: apt install redis-server)")
    server = Redis(tmp_path)
    server.start()
    yield server
    server.stop()
