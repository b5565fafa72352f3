"""Admission in the app: while the batcher refuses work, scoring requests get a 503 with
Retry-After before their body is read, the refusal is counted, and the other routes answer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from serving.admission import is_scoring
from serving.app import create_app
from serving.bundle import Bundle
from serving.config import ServeConfig
from serving.manager import FolderSource
from serving.schemas import EXAMPLE_FLIGHT
from serving.state import ServingState
from tests.processes import metric

from .conftest import ready_client

CONFIG = ServeConfig(poll_interval_s=0, max_queue_rows=64)


@pytest.fixture(scope="module")
def client(model_folder: Bundle) -> Iterator[TestClient]:
    with ready_client(create_app(CONFIG, FolderSource(model_folder.folder))) as client:
        yield client


def _shed(client: TestClient, reason: str) -> float:
    return metric(client.get("/metrics").text, "mlops_shed_requests_total", reason=reason)


def test_a_full_queue_refuses_scoring_before_reading_the_body(client: TestClient) -> None:
    state: ServingState = client.app.state.serving  # type: ignore[attr-defined]
    before = _shed(client, "queue_full")
    state.batcher.queued_rows = CONFIG.max_queue_rows  # as if 64 flights were waiting
    try:
        for path in ("/predict", "/invocations", "/v2/models/flight-delay/infer"):
            # not even JSON: a 503, not a 422, shows the body was never parsed
            response = client.post(path, content=b"{not json")
            assert response.status_code == 503, (path, response.text)
            assert response.headers["retry-after"] == "1"
            assert "overloaded" in response.json()["detail"]
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get("/model").status_code == 200
        metrics = client.get("/metrics").text
        assert "mlops_queue_rows 64.0" in metrics
    finally:
        state.batcher.queued_rows = 0
    assert _shed(client, "queue_full") == before + 3
    assert client.post("/predict", content=b"{not json").status_code == 422  # admitted again
    assert client.post("/predict", json={"flights": [EXAMPLE_FLIGHT]}).status_code == 200
    assert state.batcher.in_flight == 0  # every admitted request counted out, 4xx included


def test_only_scoring_routes_are_refused() -> None:
    assert is_scoring("/predict") and is_scoring("/invocations")
    assert is_scoring("/v2/models/flight-delay/infer")
    for path in ("/v2/health/live", "/v2/health/ready", "/metrics", "/admin/reload", "/model"):
        assert not is_scoring(path)
