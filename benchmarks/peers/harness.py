"""The peers' side of benchmarks/serving.py: each peer's environment, server and requests.

A peer is a model server a user would pick instead of ours, run by `benchmarks/serving.py`
beside ours on the same model, the same machine and the same load. Each is a module
`benchmarks.peers.<name>_peer` whose top level imports only the standard library (this
module imports it in the project's environment, where the framework is not installed) and
defines:

- `REQUIREMENTS`: its requirements file; its environment is made from it on first use, in
  `benchmarks/peers/.venvs/<name>` (the peers pin conflicting versions: none is a dependency
  of the project);
- `command(python, model_dir, port, mode, batching, workdir)`: the server's argv;
- `health(port)`, `endpoint(port, mode)`: the URL that answers 200 once the model is
  ready, and the one requests are posted to;
- `request(mode, flights, encoded)`: one request's body and headers;
- `probabilities(mode, answer)`: the probabilities out of an answer;
- `swap(port, folder, workdir)`, or `SWAP = None`: replace the served model in place.

The modes: *predict*, the flights as ours' `/predict` takes them, through the shared feature
transform in the peer's handler (`benchmarks.peers.common`); *model*, the model's encoded
inputs, isolating the server.
"""

from __future__ import annotations

import importlib
import json
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
VENVS = ROOT / "benchmarks" / "peers" / ".venvs"
PEERS = ("mlserver", "kserve", "bentoml", "ray", "litserve", "torchserve")
MODES = ("predict", "model")
OIP_REQUIREMENTS = "benchmarks/peers/requirements/oip.txt"  # tritonclient's (oip_client.py)
OIP_SERVERS = ("ours", "mlserver", "kserve")  # the V2 servers, named `flight-delay`


def oip_check(address: str, flights: Path) -> dict:
    """`oip_client.py` against a V2 server at host:port: its JSON and binary answers."""
    command = [str(environment("oip")), str(ROOT / "benchmarks" / "peers" / "oip_client.py")]
    from serving.protocols import V2_INPUTS  # the client's environment has no repository

    command += ["--url", address, "--model", "flight-delay", "--flights", str(flights)]
    command += ["--datatypes", json.dumps(V2_INPUTS)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def module(peer: str) -> ModuleType:
    if peer not in PEERS:
        raise ValueError(f"no peer {peer!r}: one of {', '.join(PEERS)}")
    return importlib.import_module(f"benchmarks.peers.{peer}_peer")


def environment(peer: str) -> Path:
    """The peer's interpreter, in an environment made from its requirements file on first use
    (and again whenever that file changes); `oip`: the Open Inference Protocol client's."""
    path = ROOT / (OIP_REQUIREMENTS if peer == "oip" else module(peer).REQUIREMENTS)
    requirements = path.read_text()
    venv = VENVS / peer
    python, stamp = venv / "bin" / "python", venv / ".requirements"
    if python.exists() and stamp.exists() and stamp.read_text() == requirements:
        return python
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(path)], check=True)
    stamp.write_text(requirements)
    return python


_GIVEN: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before by this process: the servers are all given
    their ports (a peer may take several) before the first of them binds."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


# The request formats the peers share (each peer's `request` and `probabilities`): plain JSON,
# ours' /predict body or the encoded tensors; or the Open Inference Protocol's V2 tensors.
JSON = {"Content-Type": "application/json"}


def predictions(answer: dict) -> list[float]:
    """The probabilities of an answer shaped as ours' /predict's."""
    return [p["delay_probability"] for p in answer["predictions"]]


def json_request(mode: str, flights: list[dict], encoded: dict) -> tuple[bytes, dict[str, str]]:
    body = {"flights": flights} if mode == "predict" else encoded
    return json.dumps(body).encode(), JSON


def json_probabilities(mode: str, answer: dict) -> list[float]:
    return predictions(answer) if mode == "predict" else answer["delay_probability"]


def v2_request(mode: str, flights: list[dict], encoded: dict) -> tuple[bytes, dict[str, str]]:
    """A V2 inference request: the encoded tensors (model), or one tensor per raw field as
    ours' V2 route takes them (predict)."""
    if mode == "model":
        inputs = [
            _tensor(name, encoded[name], datatype)
            for name, datatype in (("categorical", "INT64"), ("numerical", "FP32"))
        ]
    else:
        from serving.protocols import V2_INPUTS  # the harness's environment has the repository

        inputs = [
            {
                "name": field,
                "shape": [len(flights)],
                "datatype": datatype,
                "data": [flight.get(field) for flight in flights],
            }
            for field, datatype in V2_INPUTS.items()
        ]
    return json.dumps({"inputs": inputs}).encode(), JSON


def v2_probabilities(mode: str, answer: dict) -> list[float]:
    return next(o["data"] for o in answer["outputs"] if o["name"] == "delay_probability")


def _tensor(name: str, rows: list[list], datatype: str) -> dict:
    data = [value for row in rows for value in row]  # V2's row-major flat data
    return {"name": name, "shape": [len(rows), len(rows[0])], "datatype": datatype, "data": data}


def post(url: str, body: bytes, headers: dict[str, str], timeout: float = 30) -> dict:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())
