"""The wire formats on their own: MLflow's `dataframe_split` and `dataframe_records`, the Open
Inference Protocol's tensors (JSON and binary), and bad input named by its field."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import pytest

from serving.protocols import (
    HEADER_LENGTH,
    V2_INPUTS,
    InvalidInputError,
    from_invocations,
    from_v2,
    parse_v2,
)
from serving.schemas import EXAMPLE_FLIGHT, V2InferRequest

FLIGHTS: list[dict[str, Any]] = [
    dict(EXAMPLE_FLIGHT),
    {
        "carrier": "B6",
        "flight": 725,
        "tailnum": None,
        "origin": "JFK",
        "dest": "BQN",
        "scheduled_departure": "2013-12-01T05:40:00-05:00",  # an offset: converted to New York
        "distance": 1576.0,
    },
]
EXPECTED = [
    FLIGHTS[0] | {"scheduled_departure": datetime(2013, 12, 1, 5, 15)},
    FLIGHTS[1] | {"scheduled_departure": datetime(2013, 12, 1, 5, 40)},
]


def _split(flights: list[dict[str, Any]]) -> dict[str, Any]:
    columns = list(flights[0])
    return {"columns": columns, "data": [[f[c] for c in columns] for f in flights]}


def _problem(error: pytest.ExceptionInfo[InvalidInputError]) -> tuple[str, str]:
    return error.value.field, error.value.reason


# --- MLflow's scoring protocol --------------------------------------------------------------


def test_split_and_records_give_the_same_validated_rows() -> None:
    assert from_invocations({"dataframe_records": FLIGHTS}, 10) == EXPECTED
    assert from_invocations({"dataframe_split": _split(FLIGHTS)}, 10) == EXPECTED


def test_optional_columns_may_be_left_out() -> None:
    flights = [{k: v for k, v in f.items() if k not in ("tailnum", "distance")} for f in FLIGHTS]
    rows = from_invocations({"dataframe_split": _split(flights)}, 10)
    assert [(row["tailnum"], row["distance"]) for row in rows] == [(None, None)] * 2


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ([FLIGHTS], "body", "JSON object"),
        ({"instances": FLIGHTS}, "body", "exactly one of"),
        ({"dataframe_records": FLIGHTS, "dataframe_split": _split(FLIGHTS)}, "body", "exactly"),
        ({"dataframe_records": {"a": 1}}, "dataframe_records", "list of objects"),
        ({"dataframe_records": []}, "dataframe_records", "no flights"),
        ({"dataframe_records": FLIGHTS * 3}, "dataframe_records", "at most 5"),
        ({"dataframe_records": [FLIGHTS[0] | {"flight": "x"}]}, "dataframe_records.0.flight", ""),
        ({"dataframe_records": [FLIGHTS[0], {"carrier": "UA"}]}, "dataframe_records.1.flight", ""),
        ({"dataframe_split": {"columns": ["carrier"]}}, "dataframe_split", "columns and data"),
        ({"dataframe_split": {"columns": [1], "data": []}}, "dataframe_split.columns", "names"),
        (
            {"dataframe_split": _split(FLIGHTS) | {"data": [[1, 2]]}},
            "dataframe_split.data.0",
            "a list of 7 values",
        ),
        (
            {"dataframe_split": _split([FLIGHTS[0], FLIGHTS[1] | {"distance": -1}])},
            "dataframe_split.data.1.distance",
            "greater than or equal to 0",
        ),
    ],
)
def test_bad_mlflow_bodies_name_the_field(body: Any, field: str, reason: str) -> None:
    with pytest.raises(InvalidInputError) as error:
        from_invocations(body, 5)
    found_field, found_reason = _problem(error)
    assert found_field == field
    assert reason in found_reason


# --- The Open Inference Protocol --------------------------------------------------------------


def _tensors(flights: list[dict[str, Any]], **changes: dict[str, Any]) -> dict[str, Any]:
    inputs = [
        {
            "name": name,
            "shape": [len(flights)],
            "datatype": datatype,
            "data": [f[name] for f in flights],
        }
        | changes.get(name, {})
        for name, datatype in V2_INPUTS.items()
    ]
    return {"id": "7", "inputs": inputs}


def _v2(body: dict[str, Any], max_rows: int = 10) -> list[dict]:
    return from_v2(V2InferRequest.model_validate(body), max_rows)


def test_json_tensors_give_the_same_rows_as_mlflow() -> None:
    assert _v2(_tensors(FLIGHTS)) == EXPECTED
    as_columns = {"shape": [2, 1], "data": [[1545], [725]]}  # [n, 1] is a column too
    assert _v2(_tensors(FLIGHTS, flight=as_columns)) == EXPECTED


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        (_tensors(FLIGHTS, carrier={"datatype": "INT64"}), "inputs.carrier.datatype", "BYTES"),
        (_tensors(FLIGHTS, flight={"datatype": "BYTES"}), "inputs.flight.datatype", "INT64"),
        (_tensors(FLIGHTS, dest={"shape": [1, 2]}), "inputs.dest.shape", "[n] or [n, 1]"),
        (_tensors(FLIGHTS, dest={"shape": [3]}), "inputs.dest.data", "2 values for shape [3]"),
        (
            _tensors(FLIGHTS, dest={"shape": [1], "data": ["IAH"]}),
            "inputs.dest.shape",
            "other inputs have 2",
        ),
        ({"inputs": [{"name": "seats", "shape": [1], "datatype": "FP32"}]}, "inputs.seats", ""),
        (_tensors(FLIGHTS, origin={"data": ["EWR", None]}), "inputs.1.origin", ""),
    ],
)
def test_bad_tensors_name_the_input(body: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(InvalidInputError) as error:
        _v2(body)
    assert _problem(error)[0] == field
    assert reason in _problem(error)[1]


def test_a_required_input_left_out_is_named() -> None:
    body = _tensors(FLIGHTS)
    body["inputs"] = [t for t in body["inputs"] if t["name"] != "origin"]
    with pytest.raises(InvalidInputError) as error:
        _v2(body)
    assert _problem(error) == ("inputs.origin", "required input is missing")


def test_the_binary_extension_as_tritonclient_writes_it() -> None:
    triton = pytest.importorskip("tritonclient.http")
    dtypes = {"BYTES": object, "INT64": np.int64, "FP32": np.float32}
    flights = [f | {"tailnum": f["tailnum"] or ""} for f in FLIGHTS]  # BYTES has no null
    inputs = []
    for name, datatype in V2_INPUTS.items():
        tensor = triton.InferInput(name, [len(flights)], datatype)
        values = np.array([f[name] for f in flights], dtype=dtypes[datatype])
        tensor.set_data_from_numpy(values, binary_data=True)
        inputs.append(tensor)
    body, header_length = triton.InferenceServerClient.generate_request_body(inputs)
    request = parse_v2(body, str(header_length), 10)
    assert from_v2(request, 10) == [
        f | e for f, e in zip(EXPECTED, [{}, {"tailnum": ""}], strict=True)
    ]


def _binary(tensors: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """A binary-extension body by hand: the JSON header, then each tensor's bytes."""
    header = V2InferRequest.model_validate(
        {
            "inputs": [
                {"name": n, "shape": [1], "datatype": d, "parameters": {"binary_data_size": len(b)}}
                for n, d, b in tensors
            ]
        }
    ).model_dump_json(exclude_unset=True)
    return header.encode() + b"".join(b for _, _, b in tensors), str(len(header))


@pytest.mark.parametrize(
    ("tensors", "length", "field", "reason"),
    [
        ([("carrier", "BYTES", b"\x02\x00\x00\x00UA")], "abc", HEADER_LENGTH, "not an integer"),
        ([("carrier", "BYTES", b"\x02\x00\x00\x00UA")], "9999", HEADER_LENGTH, "larger"),
        ([("carrier", "BYTES", b"\x05\x00\x00\x00UA")], None, "inputs.carrier", "truncated"),
        ([("carrier", "BYTES", b"\x02\x00")], None, "inputs.carrier", "truncated"),
        ([("carrier", "BYTES", b"\x02\x00\x00\x00\xff\xfe")], None, "inputs.carrier", "UTF-8"),
        ([("distance", "FP32", b"\x00\x00\x00")], None, "inputs.distance", "not a FP32 array"),
        ([("distance", "FP16", b"\x00\x00")], None, "inputs.distance.datatype", "not supported"),
    ],
)
def test_bad_binary_tensors_name_the_input(
    tensors: list[tuple[str, str, bytes]], length: str | None, field: str, reason: str
) -> None:
    body, header_length = _binary(tensors)
    with pytest.raises(InvalidInputError) as error:
        parse_v2(body, length or header_length, 10)
    assert _problem(error)[0] == field
    assert reason in _problem(error)[1]


def test_a_binary_size_past_the_end_of_the_body_is_named() -> None:
    body, header_length = _binary([("carrier", "BYTES", b"\x02\x00\x00\x00UA")])
    with pytest.raises(InvalidInputError) as error:
        parse_v2(body[:-1], header_length, 10)
    assert _problem(error) == ("inputs.carrier.parameters.binary_data_size", "out of the body")


def test_a_json_header_that_is_not_a_request_is_named() -> None:
    with pytest.raises(InvalidInputError) as error:
        parse_v2(b'{"inputs": []}', None, 10)
    assert _problem(error)[0] == "inputs"
    with pytest.raises(InvalidInputError) as error:
        parse_v2(b"\xff{", None, 10)
    assert _problem(error)[0] == "body"
