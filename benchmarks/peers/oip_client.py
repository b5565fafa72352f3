"""One Open Inference Protocol (V2) client for ours, MLServer and KServe: the same tensors.

Triton's HTTP client (tritonclient 2.73.0, `benchmarks/peers/requirements/oip.txt`, in a venv of
its own without the repository) sends raw flights as ours' V2 inputs (one 1-D tensor per field,
the datatypes of `serving.protocols.V2_INPUTS`, which the caller hands over as `--datatypes`)
to `/v2/models/<model>/infer`, once as JSON and once with the binary tensor extension, and
reads `delay_probability`. It prints one JSON line,
`{"json": [...], "binary": [...]}`, where `binary` is the error's text if the server refused.

The requests say their Content-Type (tritonclient sends none): KServe's V2 route takes a JSON
model or bytes, and FastAPI's `strict_content_type` (on by default in the FastAPI it resolves
to) reads a body without one as bytes, which KServe then refuses as a binary request without
its header; KServe's own client sets it since kserve/kserve#5632.

    benchmarks/peers/.venvs/oip/bin/python benchmarks/peers/oip_client.py \
        --url 127.0.0.1:8811 --model flight-delay --flights flights.json \
        --datatypes '{"carrier": "BYTES", "flight": "INT64", ...}'

`benchmarks/serving.py` runs it (`benchmarks.peers.harness.oip_check`).

`--flights`: a JSON list of flights as in ours' /predict body (`{"flights": [...]}`'s list).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

NUMPY = {"BYTES": np.object_, "INT64": np.int64, "FP32": np.float32}
OUTPUT = "delay_probability"
CONTENT_TYPE = {False: "application/json", True: "application/octet-stream"}  # by `binary`


def inputs(
    flights: list[dict], datatypes: dict[str, str], binary: bool
) -> list[httpclient.InferInput]:
    """One 1-D tensor per field that every flight has (a field none has is left out)."""
    tensors = []
    for field, datatype in datatypes.items():
        values = [flight.get(field) for flight in flights]
        if all(value is None for value in values):
            continue
        if any(value is None for value in values):
            raise SystemExit(f"{field}: some flights have it and some do not; V2 has no null")
        tensor = httpclient.InferInput(field, [len(flights)], datatype)
        tensor.set_data_from_numpy(np.array(values, dtype=NUMPY[datatype]), binary_data=binary)
        tensors.append(tensor)
    return tensors


def infer(
    client: httpclient.InferenceServerClient,
    model: str,
    flights: list,
    datatypes: dict[str, str],
    binary: bool,
) -> list[float]:
    result = client.infer(
        model,
        inputs(flights, datatypes, binary),
        outputs=[httpclient.InferRequestedOutput(OUTPUT, binary_data=binary)],
        headers={"Content-Type": CONTENT_TYPE[binary]},
    )
    return result.as_numpy(OUTPUT).astype(float).reshape(-1).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="host:port")
    parser.add_argument("--model", default="flight-delay")
    parser.add_argument("--flights", type=Path, required=True, help="a JSON list of flights")
    parser.add_argument(
        "--datatypes",
        type=json.loads,
        required=True,
        help="each field's V2 datatype, as JSON (serving.protocols.V2_INPUTS)",
    )
    args = parser.parse_args()
    flights = json.loads(args.flights.read_text())
    with httpclient.InferenceServerClient(args.url) as client:
        answer: dict = {"json": infer(client, args.model, flights, args.datatypes, binary=False)}
        try:
            answer["binary"] = infer(client, args.model, flights, args.datatypes, binary=True)
        except InferenceServerException as error:  # a server without the binary extension
            answer["binary"] = f"refused: {str(error)[:300]}"  # some echo the whole body
    sys.stdout.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
