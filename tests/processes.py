"""`mlops serve` as a subprocess, the way a user starts it, for the tests that need one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without MLflow's or the project's variables (what a user's
    shell has), plus `extra`."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLOPS_"))}
    return keep | extra


def free_port() -> int:
    """A port nothing listens on (the OS's pick, released at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Served:
    base: str
    process: subprocess.Popen
    live_after_s: float = 0.0  # from the process's start to its first answer on /v2/health/live
    output: str = ""  # what the server printed, once it has stopped
    returncode: int | None = None

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])

    @property
    def pid(self) -> int:
        """The `mlops serve` process (with one worker, the one that serves)."""
        return self.process.pid


@contextmanager
def mlops_serve(
    *args: str,
    options: tuple[str, ...] = (),
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    ready_within_s: float = 180,
    until: Literal["ready", "live"] = "ready",
) -> Iterator[Served]:
    """`mlops [options] serve --port P [args]`, entered when /v2/health/{until} says so; SIGTERM
    at the end unless the test stopped it, then `output` and `returncode` are filled in (a
    server still running a minute after SIGTERM is killed, and says so in `output`)."""
    port = free_port()
    started = time.monotonic()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlops", *options, "serve", "--port", str(port), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    served = Served(f"http://127.0.0.1:{port}", server)
    try:
        deadline = time.monotonic() + ready_within_s
        while True:
            assert server.poll() is None, f"mlops serve exited:\n{server.stdout.read()}"
            try:
                if httpx.get(f"{served.base}/v2/health/live").status_code == 200:
                    served.live_after_s = served.live_after_s or (time.monotonic() - started)
                if until == "live" or httpx.get(f"{served.base}/v2/health/ready").is_success:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"mlops serve was not {until} in {ready_within_s} s"
            time.sleep(0.05 if until == "live" else 0.5)
        yield served
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        try:
            served.output, _ = server.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            served.output, _ = server.communicate()
            served.output += "\n[killed: still running 60 s after SIGTERM]"
        served.returncode = server.returncode
