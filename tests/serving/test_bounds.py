"""Bounded work before refusal, one bound at a time: row limits counted before rows are built
(every protocol), errors that quote an excerpt, and every header the server reads validated.
Raw ASGI requests (tests/serving/asgi.py) where a client library would tidy the header up."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest
from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient
from starlette.requests import Request

from serving.app import create_app
from serving.bundle import Bundle
from serving.config import ServeConfig
from serving.manager import FolderSource
from serving.protocols import InvalidInputError, from_invocations, parse_v2
from serving.routes.responses import MAX_ERRORS, invalid_request
from serving.schemas import EXAMPLE_FLIGHT

from . import asgi
from .conftest import ready_client

# the default limits; the event loop's lag is not shed on: here the load is the test's own
# oversized requests, scored inline one after another (test_admission tests the shedding)
CONFIG = ServeConfig(poll_interval_s=0, admin_token="s3cret", max_lag_ms=60_000)
INFER = "/v2/models/flight-delay/infer"
JSON = (b"content-type", b"application/json")
SMALL = 4096  # no refusal is longer than this


@pytest.fixture(scope="module")
def client(model_folder: Bundle) -> Iterator[TestClient]:
    app = create_app(CONFIG, FolderSource(model_folder.folder))
    with ready_client(app, raise_server_exceptions=False) as client:
        yield client


def _timed(client: TestClient, path: str, body: bytes, *headers: tuple[bytes, bytes]):
    started = time.perf_counter()
    answer = asgi.request(client, "POST", path, [JSON, *headers], [body])
    return answer, time.perf_counter() - started


# --- rows are counted before they are built --------------------------------------------------


def test_700k_empty_flights_are_refused_at_the_first_not_after_the_last(
    client: TestClient,
) -> None:
    body = b'{"flights": [' + b",".join([b"{}"] * 700_000) + b"]}"  # 2.1 MB; was 2.5 s, 28 MB
    answer, seconds = _timed(client, "/predict", body)
    assert answer.status == 422 and len(answer.body) < SMALL
    assert json.loads(answer.body)["detail"][0]["loc"] == ["body", "flights", 0, "carrier"]
    assert seconds < 0.5


def test_flights_over_the_limit_are_refused_by_counting_and_not_echoed(
    client: TestClient,
) -> None:
    flight = json.dumps({k: v for k, v in EXAMPLE_FLIGHT.items() if k != "tailnum"}).encode()
    body = b'{"flights": [' + b",".join([flight] * 60_000) + b"]}"  # 7 MB, 6x the limit
    answer, seconds = _timed(client, "/predict", body)
    assert answer.status == 422 and len(answer.body) < SMALL, len(answer.body)
    error = json.loads(answer.body)["detail"][0]
    assert error["loc"] == ["body", "flights"] and error["type"] == "too_long"
    assert error["input"].endswith("…")
    assert seconds < 2


def test_a_v2_bytes_tensor_is_not_decoded_past_the_row_limit(client: TestClient) -> None:
    elements = b"\x01\x00\x00\x00A" * 1_500_000  # 7.5 MB of one-letter BYTES elements
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "carrier",
                    "shape": [10],  # the shape lies: the bytes say 1.5 million
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(elements)},
                }
            ]
        }
    ).encode()
    length = (b"inference-header-content-length", str(len(header)).encode())
    answer, seconds = _timed(client, INFER, header + elements, length)
    assert answer.status == 400 and len(answer.body) < SMALL
    assert "at most 10000 per request" in json.loads(answer.body)["error"]
    assert seconds < 0.5


def test_binary_bytes_decoding_stops_at_the_limit() -> None:
    # max_rows + 1 good elements, then garbage: refused for the rows, before the garbage
    raw = b"\x02\x00\x00\x00UA" * 3 + b"\xff\xff\xff\xff"
    header = json.dumps(
        {
            "inputs": [
                {"name": "carrier", "shape": [2], "datatype": "BYTES", "parameters": {}},
            ]
        }
    )
    header = header.replace('"parameters": {}', f'"parameters": {{"binary_data_size": {len(raw)}}}')
    with pytest.raises(InvalidInputError) as error:
        parse_v2(header.encode() + raw, str(len(header)), 2)
    assert "at most 2 per request" in error.value.reason


def test_a_tensor_shape_over_the_limit_is_refused_before_its_data() -> None:
    header = '{"inputs": [{"name": "flight", "shape": [%s], "datatype": "INT64"}]}' % ("9" * 40)
    with pytest.raises(InvalidInputError) as error:
        parse_v2(header.encode(), None, 10)
    assert error.value.field == "inputs.flight.shape"
    assert error.value.reason == "more than 10 flights; at most 10 per request"


def test_dataframe_split_rows_are_counted_before_they_are_built() -> None:
    data: list = [["UA"]] * 50
    data[30] = "not a row"  # the old code built rows first, and named this one
    body = {"dataframe_split": {"columns": ["carrier"], "data": data}}
    with pytest.raises(InvalidInputError) as error:
        from_invocations(body, 10)
    assert error.value.field == "dataframe_split.data"
    assert "50 flights; at most 10" in error.value.reason


# --- nesting and excerpts ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/predict", "/invocations", INFER])
def test_nesting_is_bounded_on_every_protocol(client: TestClient, path: str) -> None:
    deep = b'{"dataframe_records": ' + b"[" * 300 + b"]" * 300 + b"}"
    answer = asgi.request(client, "POST", path, [JSON], [deep])
    assert answer.status in (400, 422) and b"recursion limit" in answer.body


def test_a_422_quotes_an_excerpt_of_a_5mb_value(client: TestClient) -> None:
    body = json.dumps({"flights": [EXAMPLE_FLIGHT | {"carrier": "U" * 5_000_000}]}).encode()
    answer = asgi.request(client, "POST", "/predict", [JSON], [body])
    assert answer.status == 422 and len(answer.body) < SMALL, len(answer.body)
    assert json.loads(answer.body)["detail"][0]["input"] == "U" * 120 + "…"


@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"1" * 5000])
def test_a_422_quoting_a_number_json_cannot_write_is_still_a_422(
    client: TestClient, value: bytes
) -> None:
    body = b'{"flights": [{"carrier": "UA", "flight": %s}]}' % value
    answer = asgi.request(client, "POST", "/predict", [JSON], [body])
    assert answer.status == 422 and len(answer.body) < SMALL, answer.body[:200]


def test_a_422_names_at_most_max_errors() -> None:
    errors = [{"type": "missing", "loc": ("body", i), "msg": "Field required"} for i in range(99)]
    request = Request({"type": "http", "headers": []})
    response = asyncio.run(invalid_request(request, RequestValidationError(errors)))
    assert response.status_code == 422
    assert len(json.loads(response.body)["detail"]) == MAX_ERRORS


def test_v2_messages_quote_an_excerpt_of_names(client: TestClient) -> None:
    body = json.dumps({"inputs": [{"name": "x" * 1_000_000, "shape": [1], "datatype": "BYTES"}]})
    answer = asgi.request(client, "POST", INFER, [JSON], [body.encode()])
    assert answer.status == 400 and len(answer.body) < SMALL


# --- headers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("declared", "status"),
    [(b"9" * 5000, 413), (b"0" * 30 + b"9" * 12, 413), (b"abc", 400), (b"-1", 400), (b"", 400)],
)
def test_content_length_is_validated(client: TestClient, declared: bytes, status: int) -> None:
    answer = asgi.request(client, "POST", "/predict", [JSON, (b"content-length", declared)])
    assert answer.status == status and len(answer.body) < SMALL


@pytest.mark.parametrize("declared", [" 12", "+12", "1_2", "١٢", "", "12.0"])
def test_the_v2_header_length_is_digits_only(client: TestClient, declared: str) -> None:
    header = (b"inference-header-content-length", declared.encode())
    answer = asgi.request(client, "POST", INFER, [JSON, header], [b'{"inputs": []}' * 2])
    assert answer.status == 400
    assert json.loads(answer.body) == {"error": "Inference-Header-Content-Length: not an integer"}


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (b"s3cret", 401),  # a bare token was accepted
        (b"Basic s3cret", 401),
        (b"Bearer", 401),
        (b"Bearer s3cret\xff", 401),
        (b"bearer s3cret", 200),  # the scheme is case-insensitive
        (b"Bearer s3cret", 200),
    ],
)
def test_the_authorization_header_is_a_bearer_token(
    client: TestClient, authorization: bytes, status: int
) -> None:
    answer = asgi.request(client, "POST", "/admin/reload", [(b"authorization", authorization)])
    assert answer.status == status
    if status == 401:
        assert (b"www-authenticate", b"Bearer") in answer.headers


def test_a_413_by_content_length_is_counted(client: TestClient) -> None:
    declared = (b"content-length", str(CONFIG.max_body_bytes + 1).encode())
    assert asgi.request(client, "POST", "/predict", [JSON, declared]).status == 413
    metrics = client.get("/metrics").text
    assert 'mlops_requests_total{endpoint="unmatched",method="POST",status="413"}' in metrics


@pytest.mark.parametrize("encoding", [b"gzip", b"br", b"deflate, gzip", b"GZIP"])
def test_a_compressed_body_is_refused_not_parsed_as_plain(
    client: TestClient, encoding: bytes
) -> None:
    import gzip

    body = gzip.compress(json.dumps({"flights": [EXAMPLE_FLIGHT]}).encode())
    answer = asgi.request(
        client, "POST", "/predict", [JSON, (b"content-encoding", encoding)], [body]
    )
    assert answer.status == 415 and len(answer.body) < SMALL
    detail = json.loads(answer.body)["detail"]
    assert detail.startswith("content-encoding: ") and "uncompressed" in detail


def test_an_identity_encoding_is_plain(client: TestClient) -> None:
    body = json.dumps({"flights": [EXAMPLE_FLIGHT]}).encode()
    answer = asgi.request(
        client, "POST", "/predict", [JSON, (b"content-encoding", b"identity")], [body]
    )
    assert answer.status == 200, answer.body
