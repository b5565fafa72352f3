"""BentoML 1.4.40 as a peer: a `@bentoml.service` class around `benchmarks.peers.common`.

Started by BentoML's own command, `bentoml serve benchmarks.peers.bentoml_peer:FlightDelay`,
with `workers=1`. That is two processes, both in the peer's environment:

- the arbiter (`bentoml serve`, circus): it binds the port, imports the service to read its
  configuration (the model is not loaded there), starts the worker and restarts it if it dies;
- the worker (`python -m _bentoml_impl.worker.service`): uvicorn on the arbiter's socket
  (uvloop and httptools, installed as `uvicorn[standard]` would, as ours runs), the model
  loaded once in the service's `__init__` (`common.load`: onnxruntime's threads = the cores),
  and the API functions run in a thread pool of one thread (BentoML's `threads=1` default).

Circus starts the worker in a session of its own: stop the server with a SIGTERM to the
arbiter, which stops the worker (within a second here). A SIGKILL, or a signal to the
arbiter's process group, does not reach the worker, which goes on serving on the port.

Batching (`--arg batching=on`): BentoML's adaptive batching (`batchable=True`), the only kind
it has. `max_batch_size=256` *rows* for `/predict` (requests' flights are concatenated and the
answers split back; a request may be split across two batches) and 256 *requests* for
`/score`, whose batch item is one request's tensors. There is no wait to set: the dispatcher
learns the batch function's cost (`duration = a * n + b`) from its first calls and holds
requests back while it estimates that waiting pays; one batch runs at a time. Its deadline,
`max_latency_ms`, is left at its default, 60 s: a request it expects to miss it is refused
with a 503. Off (`--arg batching=off`): one request per call, the same functions.

Protocol: BentoML maps a JSON body's keys to the API function's arguments. `/predict` takes
ours' `/predict` body, `{"flights": [...]}`, unchanged, and answers with the list of
predictions (ours' `predictions`, without the `model` field: BentoML's batching can only hand
each request its slice of a batch's rows). `/score` takes `{"inputs": [{"categorical":
[[...]], "numerical": [[...]]}]}`, one request's tensors as a one-element list (a batchable
API takes exactly one argument), and answers `[[probability, ...]]`. Bad input (ValueError
from common) is BentoML's 400 (`InvalidArgument`), its body `[{"error": message}]` (a list:
a stray comma in BentoML's handler), and a traceback in the log; batching on, one bad request
fails every request of its batch with that 400. Readiness: `/readyz`, served once `__init__`
has loaded the model.

Per request, turned off: the access log (`logging.access.enabled: false`); and BentoML's usage
reports (`--do-not-track`: sent at start and periodically, not per request). Left on:
Prometheus metrics (ours keeps its own), and the OpenTelemetry middleware, which BentoML
always installs (no exporter, sample rate 0: no spans are kept).

SWAP = None: BentoML has no API to load or replace a model in a running server; its answer is
a new deployment (a rolling update, https://github.com/bentoml/BentoML/issues/754). A route
written for it would be ours' reload in BentoML's clothes, and reach one worker of several.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REQUIREMENTS = "benchmarks/peers/requirements/bentoml.txt"
SWAP = None
SERVICE = "benchmarks.peers.bentoml_peer:FlightDelay"
MAX_BATCH = 256  # rows for /predict, requests for /score (ours: 256 rows per onnxruntime call)
ROUTES = {"predict": "/predict", "model": "/score"}
BAD_INPUT = (ValueError, KeyError, TypeError)  # what common raises on a malformed body


def command(
    python: str, model_dir: Path, port: int, mode: str, batching: bool, workdir: Path
) -> list[str]:
    """`bentoml serve` from the peer's environment; the model folder comes from PEER_MODEL_DIR
    (set by the harness). Both routes are served whatever the mode."""
    bentoml = str(Path(python).parent / "bentoml")
    return [
        bentoml,
        "serve",
        SERVICE,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--arg",
        f"batching={'on' if batching else 'off'}",
        "--do-not-track",
    ]


def health(port: int) -> str:
    return f"http://127.0.0.1:{port}/readyz"


def endpoint(port: int, mode: str) -> str:
    return f"http://127.0.0.1:{port}{ROUTES[mode]}"


def request(mode: str, flights: list[dict], encoded: dict) -> tuple[bytes, dict[str, str]]:
    body = {"flights": flights} if mode == "predict" else {"inputs": [encoded]}
    return json.dumps(body).encode(), {"Content-Type": "application/json"}


def probabilities(mode: str, answer: Any) -> list[float]:
    if mode == "predict":
        return [p["delay_probability"] for p in answer]
    return answer[0]


# --- the server side, in the peer's environment -----------------------------------------------


def __getattr__(name: str) -> object:
    """`FlightDelay`, the service, made on first use: the top level imports only the standard
    library, and `bentoml serve` (arbiter and worker) looks the service up by this name."""
    if name != "FlightDelay":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    service = globals()[name] = _service()
    return service


def _service() -> object:
    import bentoml
    from bentoml.exceptions import InvalidArgument

    from benchmarks.peers import common

    batching = bentoml.use_arguments().batching == "on"
    api = bentoml.api(batchable=True, max_batch_size=MAX_BATCH) if batching else bentoml.api

    @bentoml.service(name="flight_delay", workers=1, logging={"access": {"enabled": False}})
    class FlightDelay:
        def __init__(self) -> None:
            self.model = common.load()

        @api
        def predict(self, flights: list[dict]) -> list[dict]:
            """ours' /predict body; batched, the flights of several requests at once."""
            try:
                return common.predict(self.model, {"flights": flights})["predictions"]
            except BAD_INPUT as error:
                raise InvalidArgument(str(error)) from None

        @api
        def score(self, inputs: list[dict]) -> list[list[float]]:
            """The encoded tensors: one request's (batching off) or several requests'."""
            try:
                tensors = [common.encoded(body) for body in inputs]
                if len(tensors) == 1:
                    return [common.score_encoded(self.model, *tensors[0])]
                return common.score_encoded_many(self.model, tensors)
            except BAD_INPUT as error:
                raise InvalidArgument(f"bad input: {error}") from None

    return FlightDelay
