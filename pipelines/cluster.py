"""Connect to Dask: an existing scheduler when one is given, else a LocalCluster."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Dask is imported when a client is made: settings read this without it
    from distributed import Client

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterConfig:
    """`MLOPS_DASK__N_WORKERS` and friends; the scheduler is `MLOPS_DASK_SCHEDULER`."""

    scheduler: str = ""  # tcp://host:8786 runs the same graph on an existing cluster
    n_workers: int = 2
    threads_per_worker: int = 1
    processes: bool = True
    memory_limit: str = "auto"
    dashboard_address: str | None = None


@contextmanager
def dask_client(config: ClusterConfig) -> Iterator[Client]:
    from distributed import Client, LocalCluster

    if config.scheduler:
        logger.info("connecting to the Dask scheduler at %s", config.scheduler)
        with Client(config.scheduler) as client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=config.n_workers,
            threads_per_worker=config.threads_per_worker,
            processes=config.processes,
            memory_limit=config.memory_limit,
            dashboard_address=config.dashboard_address,
            silence_logs=logging.WARNING,
        ) as cluster,
        Client(cluster) as client,
    ):
        logger.info("started a LocalCluster: %s", cluster)
        yield client
