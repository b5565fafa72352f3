"""`mlops serve` as a subprocess, the way a user starts it, for the tests that need one; and
the processes around it (MLflow, Redis, the HAProxy edge)."""

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
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without MLflow's or the project's variables (what a user's
    shell has), plus `extra`."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLOPS_"))}
    return keep | extra


def samples(exposition: str, name: str, **labels: str) -> list[Sample]:
    """A Prometheus exposition's samples named `name` (a counter's with `_total`, a
    histogram's with `_bucket`, `_count`...) whose labels include `labels`."""
    return [
        sample
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    ]


def metric(exposition: str, name: str, **labels: str) -> float:
    """The sum of those samples' values: 0 where there are none."""
    return sum(sample.value for sample in samples(exposition, name, **labels))


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

    def kill(self) -> None:
        """SIGKILL to the server and its workers at once, as a container's kill: nothing of
        theirs runs after it (no shutdown, no flush)."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    @property
    def pid(self) -> int:
        """The `mlops serve` process (with one worker, the one that serves)."""
        return self.process.pid

    def every_worker_ready(self, workers: int, within_s: float = 120) -> set[int]:
        """Until `workers` processes have each answered /model (a new connection each time,
        which the kernel hands to any worker): readiness is a worker's own, so a server whose
        first worker is ready may still have another loading its model. Their pids."""
        deadline, ready = time.monotonic() + within_s, set[int]()
        while len(ready) < workers:
            assert time.monotonic() < deadline, f"{len(ready)} of {workers} ready: {ready}"
            answer = httpx.get(f"{self.base}/model")
            if answer.status_code == 200:
                ready.add(answer.json()["pid"])
            else:
                time.sleep(0.1)
        return ready


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
    command = [sys.executable, "-m", "mlops", *options, "serve", "--port", str(port), *args]
    with serving_process(command, port, cwd, env, ready_within_s, until) as served:
        yield served


@contextmanager
def serving_process(
    command: list[str],
    port: int,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    ready_within_s: float = 180,
    until: Literal["ready", "live"] = "ready",
) -> Iterator[Served]:
    """Any command that serves the API on `port` (`mlops serve`, the serving image's uvicorn
    factory), as `mlops_serve` describes."""
    started = time.monotonic()
    server = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its workers in its process group: `Served.kill` stops all
    )
    served = Served(f"http://127.0.0.1:{port}", server)
    try:
        deadline = time.monotonic() + ready_within_s
        while True:
            assert server.poll() is None, f"the server exited:\n{server.stdout.read()}"
            try:
                if httpx.get(f"{served.base}/v2/health/live").status_code == 200:
                    served.live_after_s = served.live_after_s or (time.monotonic() - started)
                if until == "live" or httpx.get(f"{served.base}/v2/health/ready").is_success:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"the server was not {until} in {ready_within_s} s"
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


class MlflowServer:
    """`mlflow server` as a process (the tests' MLflow that stops and starts again): its own
    artifact root under `root`, and a SQLite store there unless `backend` names another."""

    def __init__(self, root: Path, backend: str = "") -> None:
        self.root, self.port = root, free_port()
        self.backend = backend or f"sqlite:///{root / 'mlflow.db'}"
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, within_s: float = 120) -> None:
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"),
                *("--port", str(self.port), "--workers", "1"),
                *("--backend-store-uri", self.backend),
                *("--artifacts-destination", str(self.root / "artifacts")),
            ],
            env=clean_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its workers stop with it
        )
        deadline = time.monotonic() + within_s
        while not self.answers():
            assert self.process.poll() is None, "mlflow server exited"
            assert time.monotonic() < deadline, f"mlflow server not up in {within_s} s"
            time.sleep(0.2)

    def answers(self) -> bool:
        try:
            return httpx.get(f"{self.uri}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM waits for requests in flight (30 s at most); SIGKILL is a crash."""
        if self.process is not None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
            self.process = None


class Redis:
    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while (
            subprocess.run(
                ["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True
            ).stdout.strip()
            != "PONG"
        ):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(20)
            self.process = None


EDGE_CONFIG = Path(__file__).resolve().parents[1] / "infra/edge/haproxy.cfg"


@dataclass
class Edge:
    port: int  # the API through the edge, on 127.0.0.1
    metrics: str  # HAProxy's Prometheus page
    process: subprocess.Popen
    output: str = ""  # what HAProxy printed, once it has stopped

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def refused(self) -> float:
        """The scoring requests the edge refused itself (its `shed` backend's answers, by
        HAProxy's exporter)."""
        page = httpx.get(self.metrics).text
        return metric(page, "haproxy_backend_http_responses_total", proxy="shed", code="5xx")


@contextmanager
def haproxy_edge(
    upstream_port: int,
    max_conns: int = 32,
    max_queue: int = 32,
    cpus: set[int] | None = None,
) -> Iterator[Edge]:
    """The stack's edge (infra/edge/haproxy.cfg, the compose file's) in front of the API on
    `upstream_port`, on 127.0.0.1, optionally on `cpus` only (then one thread per CPU: HAProxy
    starts as many as it may use). Entered when it answers liveness through to the API."""
    port, metrics = free_port(), free_port()
    env = clean_env(
        EDGE_BIND=f"127.0.0.1:{port}",
        EDGE_UPSTREAM=f"127.0.0.1:{upstream_port}",
        EDGE_METRICS_BIND=f"127.0.0.1:{metrics}",
        EDGE_MAX_CONNS=str(max_conns),
        EDGE_MAX_QUEUE=str(max_queue),
    )
    command = ["haproxy", "-db", "-f", str(EDGE_CONFIG)]  # -db: in the foreground
    if cpus is not None:
        command = ["taskset", "--cpu-list", ",".join(map(str, sorted(cpus))), *command]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    edge = Edge(port, f"http://127.0.0.1:{metrics}/metrics", process)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, f"haproxy exited:\n{process.stdout.read()}"
            try:
                if httpx.get(f"{edge.base}/v2/health/live").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "haproxy did not answer in 20 s"
            time.sleep(0.05)
        yield edge
    finally:
        process.terminate()
        edge.output, _ = process.communicate(timeout=20)
