"""The wire formats: /predict's own, MLflow's scoring protocol, and the Open Inference Protocol.

Each adapter turns a body into validated flight rows (dicts of RAW_INPUTS) or raises
`InvalidInputError` naming the field and the reason; the app maps that to a 4xx.

Work before refusal is bounded: the row limit is checked before rows are built or tensors
decoded, validation stops at the first bad flight, and what an error quotes of the input is an
excerpt (`serving.excerpts`). JSON nesting is bounded by pydantic-core's parser (jiter: 200).
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import Field, TypeAdapter, ValidationError

from pipelines.transform import RAW_INPUTS
from serving.excerpts import cut, excerpt
from serving.schemas import Flight, V2InferRequest

FLIGHTS = TypeAdapter(Annotated[list[Flight], Field(fail_fast=True)])  # the first bad flight

# V2 datatypes of the inputs: BYTES for text and times, INT64/FP32 for numbers.
V2_INPUTS = {
    "carrier": "BYTES",
    "flight": "INT64",
    "tailnum": "BYTES",
    "origin": "BYTES",
    "dest": "BYTES",
    "scheduled_departure": "BYTES",
    "distance": "FP32",
}
V2_REQUIRED = ("carrier", "flight", "origin", "dest", "scheduled_departure")
V2_NUMERIC = {"INT64", "INT32", "FP32", "FP64"}


class InvalidInputError(ValueError):
    """Bad input, by field; both are cut short, as they may quote what the client sent."""

    def __init__(self, field: str, reason: str) -> None:
        field, reason = cut(field), cut(reason)
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _location(error: dict) -> str:
    return ".".join(str(part) for part in error["loc"])


def validate_flights(records: list[Any], prefix: str, max_rows: int) -> list[dict]:
    """Records -> validated rows; the first problem names its field as `<prefix>.<i>.<field>`."""
    if not records:
        raise InvalidInputError(prefix, "no flights: send at least one")
    _check_rows(len(records), prefix, max_rows)
    try:
        flights = FLIGHTS.validate_python(records)
    except ValidationError as error:
        first = error.errors()[0]
        raise InvalidInputError(f"{prefix}.{_location(first)}", first["msg"]) from None
    return [flight.model_dump(include=set(RAW_INPUTS)) for flight in flights]


def _check_rows(rows: int | None, field: str, max_rows: int) -> None:
    """Refused past `max_rows` (None: more rows than that, not counted further)."""
    if rows is None or rows > max_rows:
        # a shape may claim a 40-digit number of rows: not worth quoting
        count = rows if rows is not None and rows.bit_length() <= 32 else f"more than {max_rows}"
        raise InvalidInputError(field, f"{count} flights; at most {max_rows} per request")


def from_invocations(body: Any, max_rows: int) -> list[dict]:
    """MLflow's scoring protocol: `dataframe_split` or `dataframe_records`."""
    if not isinstance(body, dict):
        raise InvalidInputError(
            "body", "expected a JSON object with dataframe_split or dataframe_records"
        )
    formats = [key for key in ("dataframe_split", "dataframe_records") if key in body]
    if len(formats) != 1:
        raise InvalidInputError(
            "body",
            "expected exactly one of dataframe_split, dataframe_records "
            "(tensor inputs are not supported: this model takes a table of flights)",
        )
    if formats[0] == "dataframe_records":
        records = body["dataframe_records"]
        if not isinstance(records, list):
            raise InvalidInputError("dataframe_records", "expected a list of objects")
        return validate_flights(records, "dataframe_records", max_rows)
    split = body["dataframe_split"]
    if not isinstance(split, dict) or not isinstance(split.get("data"), list):
        raise InvalidInputError("dataframe_split", "expected an object with columns and data")
    columns = split.get("columns")
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise InvalidInputError("dataframe_split.columns", "expected a list of column names")
    _check_rows(len(split["data"]), "dataframe_split.data", max_rows)  # before rows are built
    records = []
    for i, row in enumerate(split["data"]):
        if not isinstance(row, list) or len(row) != len(columns):
            raise InvalidInputError(
                f"dataframe_split.data.{i}", f"expected a list of {len(columns)} values"
            )
        records.append(dict(zip(columns, row, strict=True)))
    return validate_flights(records, "dataframe_split.data", max_rows)


HEADER_LENGTH = "Inference-Header-Content-Length"
_BINARY_DTYPES = {"INT64": "<i8", "INT32": "<i4", "FP32": "<f4", "FP64": "<f8"}


def parse_v2(body: bytes, header_length: str | None, max_rows: int) -> V2InferRequest:
    """A V2 request: JSON, or (the binary tensor extension) a JSON header of `header_length`
    bytes (the Inference-Header-Content-Length header, as sent) followed by the tensors whose
    `parameters.binary_data_size` say how long they are. A tensor of more than `max_rows` rows
    is refused before it is decoded."""
    length = None
    if header_length is not None:
        # digits only: int() also takes " 12", "+1_2" and other scripts' digits
        if not (header_length.isascii() and header_length.isdigit()):
            raise InvalidInputError(HEADER_LENGTH, "not an integer")
        if len(header_length) > len(str(len(body))) or int(header_length) > len(body):
            raise InvalidInputError(HEADER_LENGTH, "larger than the body")
        length = int(header_length)
    head, tail = (body, b"") if length is None else (body[:length], body[length:])
    try:
        request = V2InferRequest.model_validate_json(head)
    except ValidationError as error:
        first = error.errors()[0]
        raise InvalidInputError(_location(first) or "body", first["msg"]) from None
    offset = 0
    for tensor in request.inputs:
        name = excerpt(tensor.name)
        if tensor.shape:
            _check_rows(tensor.shape[0], f"inputs.{name}.shape", max_rows)
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is None:
            continue
        if not isinstance(size, int) or size < 0 or offset + size > len(tail):
            raise InvalidInputError(f"inputs.{name}.parameters.binary_data_size", "out of the body")
        tensor.data = _decode(tensor.datatype, tail[offset : offset + size], name, max_rows)
        offset += size
    return request


def _decode(datatype: str, raw: bytes, name: str, max_rows: int) -> list:
    """A binary tensor's values, at most `max_rows` of them (whatever its shape claims)."""
    if datatype in _BINARY_DTYPES:
        itemsize = np.dtype(_BINARY_DTYPES[datatype]).itemsize
        if len(raw) % itemsize:
            raise InvalidInputError(f"inputs.{name}", f"{len(raw)} bytes is not a {datatype} array")
        _check_rows(len(raw) // itemsize, f"inputs.{name}", max_rows)
        return np.frombuffer(raw, dtype=_BINARY_DTYPES[datatype]).tolist()
    if datatype != "BYTES":
        raise InvalidInputError(f"inputs.{name}.datatype", f"{excerpt(datatype)} is not supported")
    values: list[str] = []
    at = 0
    while at < len(raw):  # each element: a 4-byte little-endian length, then the bytes
        if len(values) == max_rows:  # stop decoding here, not at the end of the bytes
            _check_rows(None, f"inputs.{name}", max_rows)
        if at + 4 > len(raw):
            raise InvalidInputError(f"inputs.{name}", "truncated BYTES element")
        length = int.from_bytes(raw[at : at + 4], "little")
        element = raw[at + 4 : at + 4 + length]
        if len(element) != length:
            raise InvalidInputError(f"inputs.{name}", "truncated BYTES element")
        try:
            values.append(element.decode())
        except UnicodeDecodeError:
            raise InvalidInputError(f"inputs.{name}", "BYTES elements must be UTF-8") from None
        at += 4 + length
    return values


def from_v2(request: V2InferRequest, max_rows: int) -> list[dict]:
    """Named 1-D tensors, one per raw field, into rows."""
    columns: dict[str, list] = {}
    rows: int | None = None
    for tensor in request.inputs:
        name = tensor.name
        if name not in V2_INPUTS:
            raise InvalidInputError(
                f"inputs.{excerpt(name)}", f"unknown input; the inputs are {sorted(V2_INPUTS)}"
            )
        if name in columns:
            raise InvalidInputError(f"inputs.{name}", "sent twice")
        expected = V2_INPUTS[name]
        numeric = expected in V2_NUMERIC
        if (tensor.datatype in V2_NUMERIC) != numeric:
            raise InvalidInputError(
                f"inputs.{name}.datatype", f"{excerpt(tensor.datatype)}; expected {expected}"
            )
        if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise InvalidInputError(
                f"inputs.{name}.shape", f"{excerpt(tensor.shape)}; expected [n] or [n, 1]"
            )
        _check_rows(tensor.shape[0], f"inputs.{name}.shape", max_rows)  # before rows are built
        if len(tensor.data) != tensor.shape[0]:  # before flattening 4 million values
            raise InvalidInputError(
                f"inputs.{name}.data",
                f"{len(tensor.data)} values for shape {excerpt(tensor.shape)}",
            )
        data = _flatten(tensor.data)
        if rows is not None and len(data) != rows:
            raise InvalidInputError(
                f"inputs.{name}.shape", f"{len(data)} rows; other inputs have {rows}"
            )
        rows = len(data)
        columns[name] = data
    missing = [name for name in V2_REQUIRED if name not in columns]
    if missing:
        raise InvalidInputError(f"inputs.{missing[0]}", "required input is missing")
    records = [{name: values[i] for name, values in columns.items()} for i in range(rows or 0)]
    return validate_flights(records, "inputs", max_rows)


def _flatten(data: list) -> list:
    return [v[0] if isinstance(v, list) and len(v) == 1 else v for v in data]
