"""Hostile clients over loopback against the real server (`mlops serve`, its protocol and its
limits): slowloris, a 64 MiB header, an 8 MB V2 body at a steady rate, JSON nested deep, bodies
whose 4xx would echo megabytes, 700k empty flights; meanwhile /v2/health/live answers fast,
the server's memory stays bounded, every refusal is short and none is a 5xx.

A brief siege runs in the default suite; the long one (hundreds of connections, every attack
three times) is `slow`. `siege()` returns its figures, so it can be pointed at any server.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from serving.bundle import Bundle
from serving.schemas import EXAMPLE_FLIGHT
from tests.processes import mlops_serve

HEADER_TIMEOUT_S = 1.0
LONGEST_REFUSAL = 4096
MiB = 1024 * 1024

# The prober runs in a process of its own: in this one it would wait for the attackers' GIL.
PROBE = """
import json, sys, time, httpx
base, seconds = sys.argv[1], float(sys.argv[2])
latencies = []
with httpx.Client(base_url=base, timeout=30) as client:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        status = client.get("/v2/health/live").status_code
        latencies.append((time.perf_counter() - started) * 1000 if status == 200 else 1e9)
        time.sleep(0.005)
print(json.dumps(latencies))
"""


@dataclass
class Figures:
    live_ms: list[float] = field(default_factory=list)
    answers: list[tuple[str, int, int]] = field(default_factory=list)  # attack, status, bytes
    baseline_rss_mb: float = 0.0
    peak_rss_mb: float = 0.0
    slowloris_open_after_s: dict[float, int] = field(default_factory=dict)
    header_sent_mb: float = 0.0  # of the 64 MiB header, before the server refused it

    def live_p99_ms(self) -> float:
        ordered = sorted(self.live_ms)
        return ordered[int(len(ordered) * 0.99)]

    def summary(self) -> dict:
        return {
            "live_requests": len(self.live_ms),
            "live_p99_ms": round(self.live_p99_ms(), 1),
            "live_max_ms": round(max(self.live_ms), 1),
            "rss_mb": (round(self.baseline_rss_mb), round(self.peak_rss_mb)),
            "slowloris_open_after_s": self.slowloris_open_after_s,
            "header_sent_mb": round(self.header_sent_mb, 1),
            "answers": sorted(set(self.answers)),
        }


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants (uvicorn's workers), from /proc."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        total += next(int(line.split()[1]) for line in status.splitlines() if line[:6] == "VmRSS:")
        pending += [int(child) for child in children]
    return total / 1024


def _raw(base: str, head: bytes, body_parts: list[bytes], pause_s: float) -> tuple[int, int]:
    """A request by hand on its own socket; (status, response bytes), status 0 if the server
    closed the connection without an answer."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        try:
            sock.sendall(head)
            for part in body_parts:
                sock.sendall(part)
                time.sleep(pause_s)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
                if len(answer) > 64 * MiB:
                    break
        except (ConnectionResetError, TimeoutError):
            pass
    status = int(answer[9:12]) if answer.startswith(b"HTTP/1.1 ") else 0
    return status, len(answer)


def _post(base: str, path: str, body: bytes, *headers: bytes, pause_s: float = 0.0) -> tuple:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    ).encode() + b"".join(h + b"\r\n" for h in headers)
    parts = [body[i : i + 256 * 1024] for i in range(0, len(body), 256 * 1024)]
    return _raw(base, head + b"\r\n", parts, pause_s)


def _v2_binary_body(size: int) -> tuple[bytes, bytes]:
    """A binary V2 body of about `size` bytes: one BYTES tensor of one-letter elements."""
    elements = b"\x01\x00\x00\x00A" * (size // 5)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "carrier",
                    "shape": [len(elements) // 5],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(elements)},
                }
            ]
        }
    ).encode()
    return header + elements, b"Inference-Header-Content-Length: %d" % len(header)


def _attacks(base: str, figures: Figures) -> dict[str, Callable[[], tuple[int, int]]]:
    v2_body, v2_header = _v2_binary_body(8_000_000)  # under the 8 MiB limit: parsed
    echo = json.dumps({"flights": [EXAMPLE_FLIGHT | {"carrier": "U" * 5_000_000}]}).encode()
    deep = b'{"dataframe_records": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    empties = b'{"flights": [' + b",".join([b"{}"] * 700_000) + b"]}"

    def big_header() -> tuple[int, int]:
        sent = 0
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            try:
                sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nX-Big: ")
                while sent < 64 * MiB:
                    sock.sendall(b"a" * 65536)
                    sent += 65536
                sock.sendall(b"\r\n\r\n")
                answer = sock.recv(65536)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                answer = b""
        figures.header_sent_mb = max(figures.header_sent_mb, sent / MiB)
        return (int(answer[9:12]) if answer.startswith(b"HTTP/1.1 ") else 0), len(answer)

    return {
        "64 MiB header": big_header,
        "8 MB V2 at 16 MB/s": lambda: _post(
            base, "/v2/models/flight-delay/infer", v2_body, v2_header, pause_s=1 / 64
        ),
        "deep /invocations": lambda: _post(base, "/invocations", deep),
        "5 MB value in a 422": lambda: _post(base, "/predict", echo),
        "700k empty flights": lambda: _post(base, "/predict", empties),
    }


def _slowloris(base: str, connections: int, seconds: float, figures: Figures) -> None:
    """`connections` sockets, each sending a head a header line at a time, never ending it;
    counts those still open at each second."""
    host, port = base.removeprefix("http://").split(":")
    sockets = []
    for _ in range(connections):
        sock = socket.create_connection((host, int(port)))
        sock.setblocking(False)
        sock.send(b"POST /predict HTTP/1.1\r\nHost: t\r\n")
        sockets.append(sock)
    started = time.monotonic()
    open_ = set(sockets)
    while (elapsed := time.monotonic() - started) < seconds:
        readable, _, _ = select.select(list(open_), [], [], 0.25)
        for sock in readable:  # the server answered (408) or closed
            try:
                while sock.recv(65536):
                    pass
            except BlockingIOError:
                continue
            except ConnectionResetError:
                pass
            open_.discard(sock)
        for sock in list(open_):
            try:
                sock.send(b"X-Trickle: 1\r\n")
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                open_.discard(sock)
        figures.slowloris_open_after_s[int(elapsed)] = len(open_)
    for sock in sockets:
        sock.close()


def siege(base: str, pid: int, connections: int, rounds: int, seconds: float) -> Figures:
    """Every attack `rounds` times while `connections` slowloris sockets trickle, and a prober
    measures /v2/health/live, for `seconds`."""
    figures = Figures(baseline_rss_mb=tree_rss_mb(pid))
    figures.peak_rss_mb = figures.baseline_rss_mb
    prober = subprocess.Popen(
        [sys.executable, "-c", PROBE, base, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    done = threading.Event()

    def sample_rss() -> None:
        while not done.wait(0.05):
            figures.peak_rss_mb = max(figures.peak_rss_mb, tree_rss_mb(pid))

    def attack() -> None:
        for _ in range(rounds):
            for name, run in _attacks(base, figures).items():
                status, size = run()
                figures.answers.append((name, status, size))

    threads = [
        threading.Thread(target=sample_rss),
        threading.Thread(target=_slowloris, args=(base, connections, seconds - 1, figures)),
        threading.Thread(target=attack),
    ]
    for thread in threads:
        thread.start()
    out, _ = prober.communicate(timeout=seconds + 120)
    figures.live_ms = json.loads(out)
    for thread in threads[1:]:
        thread.join(timeout=120)
    done.set()
    threads[0].join()
    return figures


def _assert_withstood(figures: Figures) -> None:
    summary = figures.summary()
    assert figures.live_p99_ms() < 50, summary
    for name, status, size in figures.answers:
        # the 64 MiB header's 431 is often lost: the server closes with bytes unread (a reset)
        assert 400 <= status < 500 or (name == "64 MiB header" and status == 0), summary
        assert size <= LONGEST_REFUSAL, summary
    assert figures.header_sent_mb < 16, summary  # refused at 16 KiB; the rest: socket buffers
    assert figures.peak_rss_mb - figures.baseline_rss_mb < 150, summary  # 42 MB measured
    # every trickling connection closed a second or two after the header timeout
    closed_by = int(HEADER_TIMEOUT_S + 2)
    assert all(n == 0 for s, n in figures.slowloris_open_after_s.items() if s >= closed_by), summary


@pytest.fixture(scope="module")
def server(model_folder: Bundle, tmp_path_factory: pytest.TempPathFactory):
    env = os.environ | {"MLOPS_SERVE__HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S)}
    home = tmp_path_factory.mktemp("hostile")
    args = ("--model-dir", str(model_folder.folder))
    with mlops_serve(*args, options=("--home", str(home)), env=env) as served:
        assert httpx.get(f"{served.base}/v2/health/live").status_code == 200
        yield served


def test_a_brief_siege(server) -> None:
    figures = siege(server.base, server.pid, connections=50, rounds=1, seconds=8)
    _assert_withstood(figures)


@pytest.mark.slow
def test_a_long_siege(server) -> None:
    figures = siege(server.base, server.pid, connections=400, rounds=3, seconds=30)
    _assert_withstood(figures)
