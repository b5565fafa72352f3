"""The stack's edge (infra/edge/haproxy.cfg, HAProxy) in front of the real `mlops serve`.

The edge passes at most EDGE_MAX_CONNS scoring requests at a time to the API, keeps at most
EDGE_MAX_QUEUE more waiting, and answers the rest itself with the API's 503 and Retry-After,
so an overload never reaches the Python loop (benchmarks/RESULTS.md: refusals in about 9 ms at
p99, the median of 12 runs, where the API alone takes about 100 ms). Readiness goes where
scoring goes, so that ready through the edge means scoring works through it; liveness, metrics
and the rest are never queued behind scoring. These tests run the compose file's
configuration, unchanged.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Literal

import httpx
import pandas as pd
import pytest

from serving.bundle import Bundle
from tests.processes import EDGE_CONFIG, clean_env, haproxy_edge, metric, mlops_serve

from .conftest import as_requests

pytestmark = pytest.mark.skipif(
    shutil.which("haproxy") is None,
    reason="needs haproxy (apt install haproxy), the stack's edge; .ci/run installs it",
)

REFUSAL = {"detail": "overloaded: retry shortly"}  # the API's own (serving/admission.py)
UNAVAILABLE = {"detail": "unavailable: retry shortly"}  # the edge's, with no API to send to


def _api(model: Bundle, home: Path, until: Literal["ready", "live"] = "ready", **env: str):
    """`mlops serve` on the test model, its alias not polled, with `env` (MLOPS_SERVE__...)."""
    env = os.environ | {"MLOPS_SERVE__POLL_INTERVAL_S": "0"} | env
    args = ("--model-dir", str(model.folder))
    return mlops_serve(*args, options=("--home", str(home)), env=env, until=until)


@pytest.fixture(scope="module")
def served(model_folder: Bundle, tmp_path_factory: pytest.TempPathFactory):
    with _api(model_folder, tmp_path_factory.mktemp("edge")) as server:
        yield server


def _shed_by_the_api(base: str) -> float:
    return metric(httpx.get(f"{base}/metrics").text, "mlops_shed_requests_total")


def _refused_here(answer: httpx.Response, detail: dict = REFUSAL) -> bool:
    """The edge's refusal, exactly as the API would have written it."""
    return (
        answer.status_code == 503
        and answer.headers.get("retry-after") == "1"
        and answer.headers.get("content-type") == "application/json"
        and answer.json() == detail
    )


ADDRESS = {"EDGE_UPSTREAM": "127.0.0.1:2"}
BY_NAME = {"EDGE_UPSTREAM": "api:8000", "EDGE_UPSTREAM_SLOTS": "8"}


@pytest.mark.parametrize("upstream", [ADDRESS, BY_NAME], ids=["address", "name"])
def test_the_configuration_is_valid(upstream: dict[str, str]) -> None:
    """Both ways to name the API: an address (here), a name with a server per replica (the
    stack's, which infra/smoke.sh runs)."""
    env = clean_env(
        EDGE_BIND="127.0.0.1:1",
        EDGE_METRICS_BIND="127.0.0.1:3",
        EDGE_MAX_CONNS="32",
        EDGE_MAX_QUEUE="32",
        **upstream,
    )
    check = subprocess.run(
        ["haproxy", "-c", "-f", str(EDGE_CONFIG)], env=env, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "WARNING" not in check.stdout + check.stderr, check.stdout + check.stderr


def test_only_scoring_is_limited(served, december: pd.DataFrame) -> None:
    """With no room to queue, every scoring request, by whichever path (percent-encoded too,
    which the API decodes), is refused at the edge, and everything else passes."""
    flights = as_requests(december.head(1))
    with haproxy_edge(served.port, max_conns=1, max_queue=0) as edge:
        shed_before = _shed_by_the_api(served.base)
        scoring = [
            ("/predict", {"flights": flights}),
            ("/predict?explain=1", {"flights": flights}),
            ("/%70redict", {"flights": flights}),
            ("/invocations", {"dataframe_records": flights}),
            ("/v2/models/flight-delay/infer", {"inputs": []}),
        ]
        for path, body in scoring:
            answer = httpx.post(f"{edge.base}{path}", json=body)
            assert _refused_here(answer), (path, answer.status_code, answer.text[:200])
        for path in ["/v2/health/live", "/v2/health/ready", "/model", "/metrics"]:
            assert httpx.get(f"{edge.base}{path}").status_code == 200, path
        assert _shed_by_the_api(served.base) == shed_before, "the API saw the refused requests"
        assert edge.refused() == len(scoring), "the edge counts its refusals in /metrics"


def test_a_burst_past_the_edge_is_refused_there(served, december: pd.DataFrame) -> None:
    """40 requests at once, each a few ms of scoring, at an edge that lets 2 in and 2 wait:
    the excess gets the 503 at once, what was let in is answered, liveness is never held up,
    and the API refuses nothing itself (its loop never saw the overload)."""
    body = {"flights": as_requests(december.head(200))}

    async def burst(base: str) -> tuple[list[httpx.Response], list[httpx.Response]]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
            scoring = [client.post("/predict", json=body) for _ in range(40)]
            live = [client.get("/v2/health/live") for _ in range(5)]
            answers = await asyncio.gather(*scoring, *live)
        return answers[:40], answers[40:]

    with haproxy_edge(served.port, max_conns=2, max_queue=2) as edge:
        shed_before = _shed_by_the_api(served.base)
        scored, live = asyncio.run(burst(edge.base))
        shed_after = _shed_by_the_api(served.base)
        counted = edge.refused()
    statuses = [a.status_code for a in scored]
    assert set(statuses) <= {200, 503}, statuses
    refused = [a for a in scored if a.status_code == 503]
    assert refused, "nothing was refused: the edge let 40 requests at once through"
    assert all(_refused_here(a) for a in refused)
    assert counted == len(refused), "the edge counts its refusals in /metrics"
    answered = [a for a in scored if a.status_code == 200]
    assert len(answered) >= 4, statuses  # the 2 let in and the 2 that waited, at least
    assert all(len(a.json()["predictions"]) == 200 for a in answered)
    assert all(a.status_code == 200 for a in live)
    assert shed_after == shed_before, "the API refused requests itself"


def test_a_header_too_large_stops_at_the_edge(served) -> None:
    with haproxy_edge(served.port) as edge:
        answer = httpx.get(f"{edge.base}/v2/health/live", headers={"x-big": "a" * 65536})
        assert 400 <= answer.status_code < 500
        assert httpx.get(f"{edge.base}/v2/health/live").status_code == 200


def test_the_api_stopping_behind_the_edge_fails_no_request(
    model_folder: Bundle, december: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A real SIGTERM to the API while clients send through the edge, with the stack's drain:
    the API turns not ready, the edge's check takes it out and sends the rest to its own 503 +
    Retry-After, and only then does the API close its connections. What was in flight is
    answered, and no client sees a connection error. (Without the drain, a request the edge
    sends on a connection the API is closing is retried; HAProxy 2.6 then answers some of them
    with an empty 503, a closed connection: 2 runs of 11 here.)"""
    body = {"flights": as_requests(december.head(20))}
    home = tmp_path_factory.mktemp("edge-stop")

    async def clients(base: str, stop_api, seconds: float) -> list[int | str]:
        statuses: list[int | str] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds

        async def client() -> None:
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                while loop.time() < deadline:
                    try:
                        answer = await http.post("/predict", json=body)
                        statuses.append(answer.status_code)
                        if answer.status_code == 503:
                            assert _refused_here(answer, UNAVAILABLE), answer.text[:200]
                    except httpx.TransportError as error:
                        statuses.append(type(error).__name__)

        tasks = [asyncio.create_task(client()) for _ in range(8)]
        await asyncio.sleep(seconds / 3)
        await loop.run_in_executor(None, stop_api)
        await asyncio.gather(*tasks)
        return statuses

    with (
        _api(model_folder, home, MLOPS_SERVE__DRAIN_S="2") as server,
        haproxy_edge(server.port) as edge,
    ):

        def stop_api() -> None:
            server.process.send_signal(signal.SIGTERM)
            server.process.wait(30)

        statuses = asyncio.run(clients(edge.base, stop_api, 7.0))
    assert server.returncode == 0, server.output[-2000:]
    counts = {s: statuses.count(s) for s in set(statuses)}
    assert set(counts) <= {200, 503}, counts
    assert counts.get(200, 0) > 0 and counts.get(503, 0) > 0, counts


def test_ready_through_the_edge_means_scoring_works_through_it(
    model_folder: Bundle, december: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The edge takes an API in for scoring at its next readiness check, up to a second after
    the API is ready: a client that asks the edge whether it is ready gets the edge's answer,
    so its first prediction after a yes is answered."""
    body = {"flights": as_requests(december.head(1))}
    home = tmp_path_factory.mktemp("edge-ready")
    with (
        _api(model_folder, home, until="live") as server,
        haproxy_edge(server.port) as edge,
    ):
        deadline = time.monotonic() + 120
        while httpx.get(f"{edge.base}/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "never ready through the edge"
            time.sleep(0.01)
        first = httpx.post(f"{edge.base}/predict", json=body)
        assert first.status_code == 200, first.text[:200]
        ready = httpx.get(f"{edge.base}/v2/models/flight-delay/ready")
        assert ready.status_code == 200, ready.text[:200]
