"""The API in-process: predictions, protocols, bad input, readiness, metrics, admin."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.bundle import Bundle
from serving.config import ServeConfig
from serving.manager import FolderSource, RegistrySource

from .conftest import Champion, as_requests, ready_client

CONFIG = ServeConfig(
    poll_interval_s=0, admin_token="s3cret", max_request_rows=50, max_body_bytes=64_000
)


@pytest.fixture(scope="module")
def client(model_folder: Bundle) -> Iterator[TestClient]:
    with ready_client(create_app(CONFIG, FolderSource(model_folder.folder))) as client:
        yield client


@pytest.fixture(scope="module")
def flights(december: pd.DataFrame) -> list[dict]:
    return as_requests(december.head(20))


def test_predict_answers_each_flight_in_order_and_names_the_model(
    client: TestClient, flights: list[dict], model_folder: Bundle
) -> None:
    response = client.post("/predict", json={"flights": flights[:3]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": "flight-delay", "version": model_folder.version}
    assert len(body["predictions"]) == 3
    for prediction in body["predictions"]:
        assert 0 < prediction["delay_probability"] < 1
        assert prediction["delayed"] == (
            prediction["delay_probability"] >= model_folder.decision_threshold
        )
    alone = [client.post("/predict", json={"flights": [f]}).json() for f in flights[:3]]
    for single, batched in zip(alone, body["predictions"], strict=True):
        # alone or in a batch: the same answer (up to float rounding across batch shapes)
        assert single["predictions"][0]["delay_probability"] == pytest.approx(
            batched["delay_probability"], abs=1e-6
        )
        assert single["predictions"][0]["defaults_used"] == batched["defaults_used"]


def test_a_missing_optional_field_falls_back_and_says_so(
    client: TestClient, flights: list[dict]
) -> None:
    flight = {k: v for k, v in flights[0].items() if k not in ("distance", "tailnum")}
    prediction = client.post("/predict", json={"flights": [flight]}).json()["predictions"][0]
    assert "distance" in prediction["defaults_used"]
    assert "plane_seats" in prediction["defaults_used"]  # no tail number: no plane row
    unknown = flights[0] | {"carrier": "ZZ", "dest": "XXX"}
    assert client.post("/predict", json={"flights": [unknown]}).status_code == 200


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"flight": "abc"}, "flight"),
        ({"scheduled_departure": "2013-02-30T10:00:00"}, "scheduled_departure"),
        ({"scheduled_departure": "1850-01-01T10:00:00"}, "scheduled_departure"),
        ({"distance": -5}, "distance"),
        ({"carrier": ""}, "carrier"),
        ({"origin": None}, "origin"),
    ],
)
def test_bad_fields_get_a_422_naming_them(
    client: TestClient, flights: list[dict], change: dict, field: str
) -> None:
    response = client.post("/predict", json={"flights": [flights[0] | change]})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "flights", 0, field]


def test_empty_oversized_huge_and_non_json_bodies_are_refused(
    client: TestClient, flights: list[dict]
) -> None:
    assert client.post("/predict", json={"flights": []}).status_code == 422
    too_many = client.post("/predict", json={"flights": flights[:1] * 51})
    assert too_many.status_code == 422 and too_many.json()["detail"][0]["loc"] == [
        "body",
        "flights",
    ]
    huge = client.post(
        "/predict", content=b"x" * 70_000, headers={"content-type": "application/json"}
    )
    assert huge.status_code == 413 and "limit" in huge.json()["detail"]
    # without a Content-Length (chunked), the limit holds while the body streams in
    streamed = client.post(
        "/predict",
        content=iter([b"x" * 40_000, b"x" * 40_000]),
        headers={"content-type": "application/json"},
    )
    assert streamed.status_code == 413 and "limit" in streamed.json()["detail"]
    body = json.dumps({"flights": flights[:2]}).encode()
    chunked = client.post(
        "/predict",
        content=iter([body[:50], body[50:]]),
        headers={"content-type": "application/json"},
    )
    assert chunked.status_code == 200 and len(chunked.json()["predictions"]) == 2
    broken = client.post(
        "/predict", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert broken.status_code == 422


def test_mlflow_invocations_split_and_records_match_predict(
    client: TestClient, flights: list[dict]
) -> None:
    expected = client.post("/predict", json={"flights": flights[:5]}).json()["predictions"]
    frame = pd.DataFrame(flights[:5])
    split = json.loads(frame.to_json(orient="split", index=False))
    for body in ({"dataframe_split": split}, {"dataframe_records": flights[:5]}):
        response = client.post("/invocations", json=body)
        assert response.status_code == 200, response.text
        got = response.json()["predictions"]
        assert [p["delay_probability"] for p in got] == pytest.approx(
            [p["delay_probability"] for p in expected], abs=1e-6
        )
    bad = client.post("/invocations", json={"dataframe_records": [flights[0] | {"flight": "x"}]})
    assert bad.status_code == 400
    assert "dataframe_records.0.flight" in bad.json()["message"]
    assert client.post("/invocations", json={"instances": [1]}).status_code == 400


def test_open_inference_protocol_matches_predict(client: TestClient, flights: list[dict]) -> None:
    rows = flights[:4]
    expected = client.post("/predict", json={"flights": rows}).json()["predictions"]
    inputs = [
        {"name": name, "shape": [4], "datatype": datatype, "data": [r[name] for r in rows]}
        for name, datatype in [
            ("carrier", "BYTES"),
            ("flight", "INT64"),
            ("tailnum", "BYTES"),
            ("origin", "BYTES"),
            ("dest", "BYTES"),
            ("scheduled_departure", "BYTES"),
            ("distance", "FP32"),
        ]
    ]
    response = client.post("/v2/models/flight-delay/infer", json={"id": "7", "inputs": inputs})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "7" and body["outputs"][0]["name"] == "delay_probability"
    assert body["outputs"][0]["data"] == pytest.approx(
        [p["delay_probability"] for p in expected], abs=1e-7
    )
    assert client.get("/v2/models/flight-delay").json()["outputs"][0]["datatype"] == "FP32"
    assert client.get("/v2/models/other").status_code == 404
    assert client.get("/v2/health/ready").json() == {"ready": True}
    bad = client.post(
        "/v2/models/flight-delay/infer", json={"inputs": [inputs[0] | {"datatype": "INT64"}]}
    )
    assert bad.status_code == 400 and "inputs.carrier.datatype" in bad.json()["error"]


def test_metrics_count_requests_batches_the_model_and_drift(
    client: TestClient, flights: list[dict], model_folder: Bundle
) -> None:
    client.post("/predict", json={"flights": flights})
    text = client.get("/metrics").text
    assert 'mlops_requests_total{endpoint="/predict",method="POST",status="200"}' in text
    assert "mlops_batch_rows_bucket" in text
    assert f'mlops_model_info{{name="flight-delay",version="{model_folder.version}"}} 1.0' in text
    assert 'mlops_feature_psi{feature="dep_hour"}' in text
    assert 'mlops_requests_total{endpoint="/predict",method="POST",status="422"}' in text


def test_admin_reload_needs_the_token(client: TestClient) -> None:
    assert client.post("/admin/reload").status_code == 401
    wrong = client.post("/admin/reload", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    right = client.post("/admin/reload", headers={"Authorization": "Bearer s3cret"})
    assert right.status_code == 200 and right.json()["outcome"] == "unchanged"
    assert client.get("/model").json()["onnx_sha256"]


def test_without_a_model_the_server_is_live_but_not_ready(champion: Champion, tmp_path) -> None:
    uri = champion.tracking_uri
    source = RegistrySource("no-such-model", "champion", uri, uri, tmp_path)
    with TestClient(create_app(ServeConfig(poll_interval_s=0), source)) as client:
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 503
        response = client.post("/predict", json={"flights": [{"carrier": "UA"}]})
        assert response.status_code == 422  # the body is checked first
        flight = {
            "carrier": "UA",
            "flight": 1,
            "origin": "EWR",
            "dest": "IAH",
            "scheduled_departure": "2013-12-01T05:15:00",
        }
        response = client.post("/predict", json={"flights": [flight]})
        assert response.status_code == 503
        assert "no model" in response.json()["detail"]
        assert client.post("/admin/reload").status_code == 403  # no token configured
