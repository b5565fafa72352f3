"""Fuzzing past the OpenAPI document: raw ASGI requests (any method on the app's paths and
others, repeated and malformed headers, content types and encodings, the V2 header length,
bodies nested deep, binary V2 bodies) and never a 5xx, never a long refusal.

Schemathesis (test_contract.py) generates from the document, so it sends what the document
describes and HTTP lets through; here Hypothesis sends what a hostile client would. The
default suite runs a fixed, small set of examples; the slow one draws many more.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Route

from serving.app import create_app
from serving.bundle import Bundle
from serving.config import ServeConfig
from serving.manager import FolderSource
from serving.schemas import EXAMPLE_FLIGHT

from . import asgi
from .conftest import ready_client

# no shedding on the event loop's lag: the fuzzer's own requests, one at a time, are no overload
CONFIG = ServeConfig(poll_interval_s=0, admin_token="t0ken", max_request_rows=50, max_lag_ms=60_000)
LONGEST_REFUSAL = 4096
FIELDS = [*EXAMPLE_FLIGHT, "flights", "dataframe_records", "dataframe_split", "columns", "data"]
V2_FIELDS = ["id", "inputs", "outputs", "name", "shape", "datatype", "parameters", "data"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**20, max_value=10**4200)  # past 64 bits, under str()'s limit
    | st.floats()
    | st.sampled_from([float("nan"), float("inf"), float("-inf")])  # jiter reads them; JSON no
    | st.text(max_size=30)
    | st.integers(min_value=5_000, max_value=50_000).map(lambda n: "U" * n)  # echoed, 50 KB
    | st.sampled_from(["UA", "EWR", "2013-12-01T05:15:00", "BYTES", "INT64", "FP32"])
)
keys = st.sampled_from(FIELDS + V2_FIELDS + ["binary_data_size", "force"]) | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=6),
    max_leaves=40,
)
flights = st.builds(
    lambda changes: EXAMPLE_FLIGHT | changes, st.dictionaries(st.sampled_from(FIELDS), scalars)
)
tensors = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["carrier", "flight", "origin", "dest", "x"]) | st.text(),
        "shape": st.lists(st.integers(min_value=-2, max_value=10**30), max_size=3),
        "datatype": st.sampled_from(["BYTES", "INT64", "INT32", "FP32", "FP64", "FP16", ""]),
    },
    optional={
        "data": st.lists(json_values, max_size=6),
        "parameters": st.fixed_dictionaries(
            {"binary_data_size": st.integers(min_value=-1, max_value=64) | scalars}
        ),
    },
)


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """A body, and the headers it implies (the V2 header length of a binary body)."""
    kind = draw(st.sampled_from(["json", "flights", "records", "v2", "binary", "deep", "raw"]))
    if kind == "json":
        return json.dumps(draw(json_values)).encode(), []
    if kind == "flights":
        return json.dumps({"flights": draw(st.lists(flights, max_size=4))}).encode(), []
    if kind == "records":
        return json.dumps({"dataframe_records": draw(st.lists(flights, max_size=4))}).encode(), []
    if kind in ("v2", "binary"):
        head = json.dumps({"inputs": draw(st.lists(tensors, max_size=4))}).encode()
        if kind == "v2":
            return head, []
        tail = draw(st.binary(max_size=80))
        length = draw(st.just(str(len(head)).encode()) | st.binary(max_size=6))
        return head + tail, [(b"inference-header-content-length", length)]
    if kind == "deep":
        depth = draw(st.integers(min_value=150, max_value=5000))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        prefix = draw(st.sampled_from([b"", b'{"flights": ', b'{"dataframe_records": ']))
        return prefix + opener * depth + closer * depth * draw(st.sampled_from([0, 1])), []
    return draw(st.binary(max_size=200)), []


header_names = st.sampled_from(
    [
        b"content-type",
        b"content-length",
        b"content-encoding",
        b"transfer-encoding",
        b"inference-header-content-length",
        b"authorization",
        b"accept",
        b"expect",
    ]
) | st.binary(min_size=1, max_size=12).map(bytes.lower)
header_values = (
    st.sampled_from(
        [
            b"application/json",
            b"application/octet-stream",
            b"text/plain; charset=utf-16",
            b"gzip",
            b"br",
            b"chunked",
            b"Bearer t0ken",
            b"Bearer wrong",
            b"100-continue",
        ]
    )
    | st.integers(min_value=-5, max_value=10**40).map(lambda i: str(i).encode())
    | st.integers(min_value=4_000, max_value=6_000).map(lambda n: b"9" * n)  # past int()'s limit
    | st.binary(max_size=40)
)


@pytest.fixture(scope="module")
def client(model_folder: Bundle) -> Iterator[TestClient]:
    app = create_app(CONFIG, FolderSource(model_folder.folder))
    with ready_client(app) as client:
        yield client


def _fuzz(client: TestClient, examples: int, derandomize: bool) -> None:
    routes = [
        (method, route.path)
        for route in client.app.routes  # type: ignore[attr-defined]
        if isinstance(route, Route)
        for method in sorted(route.methods or ())
    ]
    assert len(routes) >= 10

    @given(data=st.data())
    @settings(
        max_examples=examples,
        derandomize=derandomize,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def one_request(data: st.DataObject) -> None:
        method, template = data.draw(st.sampled_from(routes))
        method = data.draw(st.just(method) | st.sampled_from(["GET", "POST", "PUT", "HEAD", "X"]))
        name = data.draw(st.just("flight-delay") | st.text(max_size=12))
        path = template.replace("{name}", name)
        path = data.draw(st.just(path) | st.text(max_size=30).map(lambda p: "/" + p))
        body, implied = data.draw(bodies())
        headers = implied + data.draw(st.lists(st.tuples(header_names, header_values), max_size=5))
        cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=2)))
        chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        answer = asgi.request(client, method, path, headers, chunks)
        context = (method, path, headers, body[:300], answer.body[:300])
        assert answer.status < 500, context
        if answer.status >= 400:
            assert len(answer.body) <= LONGEST_REFUSAL, context

    one_request()


def test_raw_requests_never_get_a_5xx(client: TestClient) -> None:
    _fuzz(client, examples=300, derandomize=True)


@pytest.mark.slow
def test_raw_requests_never_get_a_5xx_drawn_at_length(client: TestClient) -> None:
    _fuzz(client, examples=5_000, derandomize=False)
