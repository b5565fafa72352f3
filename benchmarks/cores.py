"""Servers and load generators on separate cores, for the benchmarks' `--pin`.

On a 2-core machine a load generator and a server otherwise take cores from each other as the
scheduler pleases, and every figure moves with it. Pinned, the server (every thread of its
process tree) has the first CPU to itself, and the client the others: the capacity is one
core's, and a latency is the server's, not a client's waiting for a core it shares.

`pin_client` moves the benchmark's own process; the load generators it starts afterwards
inherit its CPUs, as do servers, which `pin_server` then moves to the first.
"""

from __future__ import annotations

import os
import subprocess

import psutil

CPUS = sorted(os.sched_getaffinity(0))  # as this process started, before `pin_client`


def pin_client() -> None:
    """This process, and every process it starts from now on, on the CPUs after the first."""
    if len(CPUS) < 2:
        raise SystemExit("--pin needs at least 2 CPUs")
    os.sched_setaffinity(0, set(CPUS[1:]))


def pinned() -> bool:
    """Whether `pin_client` has moved this process off the servers' CPU."""
    return CPUS[0] not in os.sched_getaffinity(0)


def pin_server(pid: int) -> None:
    """Every thread of `pid` and of its descendants on the first CPU (threads started later
    inherit it)."""
    server = str(CPUS[0])
    parent = psutil.Process(pid)
    for process in [parent, *parent.children(recursive=True)]:
        command = ["taskset", "--all-tasks", "--pid", "--cpu-list", server, str(process.pid)]
        subprocess.run(command, check=True, capture_output=True)
        for thread in process.threads():
            placed = psutil.Process(thread.id).cpu_affinity()
            assert placed == [CPUS[0]], f"{process.pid}/{thread.id} runs on {placed}"
