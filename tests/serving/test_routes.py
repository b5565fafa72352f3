"""The HTTP layer's own rules: the middlewares on a bare app, and what every router keeps
(bodies that are not JSON never a 500, Retry-After on a 503, the admin token before the body,
responses shaped as their models)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serving.app import create_app
from serving.bundle import Bundle
from serving.config import ServeConfig
from serving.manager import FolderSource
from serving.metrics import ServingMetrics
from serving.middleware import BodyLimit, RequestMetrics
from serving.schemas import ModelInfo, PredictResponse

from .conftest import as_requests, eventually, ready_client

CONFIG = ServeConfig(poll_interval_s=0, admin_token="s3cret", max_body_bytes=64_000)
FLIGHT = {
    "carrier": "UA",
    "flight": 1545,
    "origin": "EWR",
    "dest": "IAH",
    "scheduled_departure": "2013-12-01T05:15:00",
}

# --- the middlewares, on a bare app ---------------------------------------------------------


def _bare_app(metrics: ServingMetrics, max_bytes: int, seen: list[int]) -> Starlette:
    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        seen.append(len(body))
        return JSONResponse({"bytes": len(body)})

    async def broken(request: Request) -> JSONResponse:
        raise RuntimeError("a bug")

    app = Starlette(routes=[Route("/echo/{name}", echo, methods=["POST"]), Route("/bug", broken)])
    app.add_middleware(BodyLimit, max_bytes=max_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)  # outermost, as in serving.app
    return app


def test_body_limit_by_content_length_and_while_streaming() -> None:
    seen: list[int] = []
    client = TestClient(_bare_app(ServingMetrics(), 100, seen))
    declared = client.post("/echo/a", content=b"x" * 101)
    assert declared.status_code == 413 and "101 bytes; the limit is 100" in declared.text
    assert seen == []  # refused before the app read anything
    streamed = client.post("/echo/a", content=iter([b"x" * 60, b"x" * 60]))
    assert streamed.status_code == 413 and "over the limit of 100" in streamed.text
    assert client.post("/echo/a", content=b"x" * 100).json() == {"bytes": 100}
    assert client.post("/echo/a", content=iter([b"x" * 50, b"x" * 50])).json() == {"bytes": 100}
    bad = client.post("/echo/a", content=b"{}", headers={"content-length": "1e3"})
    assert bad.status_code == 400 and seen == [100, 100]


def test_request_metrics_count_by_route_template_and_status() -> None:
    metrics = ServingMetrics()
    client = TestClient(_bare_app(metrics, 100, []), raise_server_exceptions=False)
    client.post("/echo/a", content=b"{}")
    client.post("/echo/b", content=b"{}")
    client.get("/nowhere")
    client.get("/bug")
    text = metrics.exposition().decode()
    assert 'mlops_requests_total{endpoint="/echo/{name}",method="POST",status="200"} 2.0' in text
    assert 'mlops_requests_total{endpoint="unmatched",method="GET",status="404"} 1.0' in text
    assert 'mlops_requests_total{endpoint="/bug",method="GET",status="500"} 1.0' in text
    client.post("/echo/a", content=b"x" * 101)  # refused by its Content-Length: counted too
    text = metrics.exposition().decode()
    assert 'mlops_requests_total{endpoint="unmatched",method="POST",status="413"} 1.0' in text


# --- the routers, over the real model -------------------------------------------------------


@pytest.fixture(scope="module")
def client(model_folder: Bundle) -> Iterator[TestClient]:
    app = create_app(CONFIG, FolderSource(model_folder.folder))
    with ready_client(app, raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize(
    ("path", "status", "field"),
    [
        ("/predict", 422, "body"),
        ("/invocations", 400, "body"),
        ("/v2/models/flight-delay/infer", 400, "body"),
    ],
)
@pytest.mark.parametrize("body", [b"\xff\xfe{", b"[" * 10_000], ids=["not-utf8", "too-deep"])
def test_bodies_that_are_not_json_are_refused_not_a_500(
    client: TestClient, path: str, status: int, field: str, body: bytes
) -> None:
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert field in response.text


def test_a_v2_header_length_that_is_not_a_number_is_a_400(client: TestClient) -> None:
    response = client.post(
        "/v2/models/flight-delay/infer",
        content=b"{}",
        headers={"inference-header-content-length": "twelve"},
    )
    assert response.status_code == 400
    assert response.json() == {"error": "Inference-Header-Content-Length: not an integer"}


def test_the_admin_token_is_checked_before_the_body(client: TestClient) -> None:
    bad_body = {"force": "maybe"}
    assert client.post("/admin/reload", json=bad_body).status_code == 401
    with_token = client.post(
        "/admin/reload", json=bad_body, headers={"Authorization": "Bearer s3cret"}
    )
    assert with_token.status_code == 422
    assert with_token.json()["detail"][0]["loc"] == ["body", "force"]


def test_responses_have_the_shape_of_their_models(
    client: TestClient, december: pd.DataFrame, model_folder: Bundle
) -> None:
    flights = as_requests(december.head(3))
    predicted = client.post("/predict", json={"flights": flights})
    assert predicted.headers["content-type"] == "application/json"
    PredictResponse.model_validate_json(predicted.content)
    info = ModelInfo.model_validate_json(client.get("/model").content)
    assert info.version == model_folder.version and info.last_reload is not None
    tensors = [
        {"name": name, "shape": [1], "datatype": "BYTES", "data": [FLIGHT[name]]}
        for name in ("carrier", "origin", "dest", "scheduled_departure")
    ]
    tensors.append({"name": "flight", "shape": [1], "datatype": "INT64", "data": [1545]})
    inferred = client.post("/v2/models/flight-delay/infer", json={"inputs": tensors}).json()
    assert inferred["id"] is None  # V2's optional fields: `id` echoed, even when not sent,
    assert set(inferred["outputs"][0]) == {"name", "shape", "datatype", "data"}  # no parameters


def test_every_route_that_needs_a_model_says_when_to_retry(tmp_path: Path) -> None:
    app = create_app(ServeConfig(poll_interval_s=0), FolderSource(tmp_path))
    with TestClient(app) as client:
        # the first poll runs off the event loop: until it has looked, the answer is "loading"
        eventually(
            lambda: "nothing at" in client.get("/model").json()["detail"], 30, "the first poll"
        )
        for method, path, body in [
            ("POST", "/predict", {"flights": [FLIGHT]}),
            ("POST", "/invocations", {"dataframe_records": [FLIGHT]}),
            ("GET", "/model", None),
            ("GET", "/v2/models/flight-delay", None),
            ("GET", "/v2/models/flight-delay/ready", None),
            ("POST", "/v2/models/flight-delay/infer", {"inputs": [{"name": "x", "shape": [0]}]}),
        ]:
            response = client.request(method, path, json=body)
            assert response.status_code == 503, path
            assert response.headers["retry-after"] == "5", path
            detail = response.json()["detail"]  # why not, in words
            assert detail.startswith(f"no model is loaded yet: nothing at {tmp_path} yet"), path
        assert client.get("/v2/health/ready").status_code == 503
        assert client.post("/admin/reload").status_code == 403  # no token: admin is off
