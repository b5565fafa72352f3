"""The API against its own OpenAPI schema (Schemathesis) and against unchanged clients of the
protocols it speaks: tritonclient for the Open Inference Protocol, MLflow's payloads."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pandas as pd
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from serving.app import create_app
from serving.bundle import Bundle
from serving.config import ServeConfig
from serving.manager import FolderSource

from .conftest import Server, as_requests

CONFIG = ServeConfig(poll_interval_s=0, admin_token="t0ken", max_request_rows=100)


@pytest.fixture(scope="module")
def base_url(model_folder: Bundle) -> Iterator[str]:
    with Server(create_app(CONFIG, FolderSource(model_folder.folder))) as base:
        yield base


@pytest.mark.slow
def test_no_server_error_and_no_response_outside_the_schema(base_url: str) -> None:
    """Schemathesis generates requests from the app's own OpenAPI document, valid and not,
    and checks every response: no 5xx, status codes and bodies as documented."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    calls = 0
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            nonlocal calls
            calls += 1
            # Everything but ST202: JSON Schema cannot say "a date-time between 1990 and 2060",
            # so a schema-valid year 0384 is rightly a 422 naming the field.
            case.call_and_validate(excluded_checks=[positive_data_acceptance])

        check()
    assert calls >= 1_000


def test_tritonclient_speaks_to_the_server_unchanged(base_url: str, december: pd.DataFrame) -> None:
    import tritonclient.http as triton

    rows = as_requests(december.dropna(subset=["tailnum", "distance"]).head(5))
    client = triton.InferenceServerClient(url=base_url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("flight-delay")
    metadata = client.get_model_metadata("flight-delay")
    assert metadata["outputs"][0]["name"] == "delay_probability"
    columns = {
        "carrier": ("BYTES", object),
        "flight": ("INT64", np.int64),
        "tailnum": ("BYTES", object),
        "origin": ("BYTES", object),
        "dest": ("BYTES", object),
        "scheduled_departure": ("BYTES", object),
        "distance": ("FP32", np.float32),
    }
    inputs = []
    for name, (datatype, dtype) in columns.items():
        tensor = triton.InferInput(name, [len(rows)], datatype)
        tensor.set_data_from_numpy(
            np.array([r[name] for r in rows], dtype=dtype), binary_data=False
        )
        inputs.append(tensor)
    wanted = [triton.InferRequestedOutput("delay_probability", binary_data=False)]
    result = client.infer("flight-delay", inputs, outputs=wanted)
    got = result.as_numpy("delay_probability")
    expected = httpx.post(f"{base_url}/predict", json={"flights": rows}).json()["predictions"]
    np.testing.assert_allclose(got, [p["delay_probability"] for p in expected], atol=1e-6)


def test_mlflows_own_scoring_payload_works_unchanged(base_url: str, december: pd.DataFrame) -> None:
    from mlflow.models import convert_input_example_to_serving_input

    frame = pd.DataFrame(as_requests(december.head(4))).drop(columns=["tailnum"])
    payload = convert_input_example_to_serving_input(frame)
    response = httpx.post(
        f"{base_url}/invocations", content=payload, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 4
