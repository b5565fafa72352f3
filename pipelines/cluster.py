"""Connect to Dask: an existing scheduler when one is given, else a LocalCluster."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
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
        _environ_restored() as restore,
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
        restore()
        logger.info("started a LocalCluster: %s", cluster)
        yield client


@contextmanager
def _environ_restored() -> Iterator[Callable[[], None]]:
    """A LocalCluster's nannies set their workers' `distributed.nanny.pre-spawn-environ`
    (OMP_NUM_THREADS=1, MKL_NUM_THREADS=1, ...) in this process's own environment before they
    spawn them ("even if this means poisoning the process running the Nanny", distributed's
    docstring), and leave it there: everything this command ran afterwards on a thread pool
    sized from it (torch, LightGBM) ran on one thread (`mlops run` trained 1.6x slower after
    its Dask stage). Yields a function that puts those variables back as they were; it is
    called once the workers are up, and again at the end (a restarted worker sets them anew)."""
    import dask

    keys = set(dask.config.get("distributed.nanny.pre-spawn-environ", {})) | {"PYTHONHASHSEED"}
    saved = {key: os.environ.get(key) for key in keys}

    def restore() -> None:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    try:
        yield restore
    finally:
        restore()
