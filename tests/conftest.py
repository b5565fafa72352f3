"""Shared fixtures: the real bundled data, ingested once per session."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipelines.ingest import ingest, local_time
from pipelines.layout import DataLayout
from pipelines.schemas import SCHEMAS, validate
from pipelines.sources import bundled_source, read_chunks


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
