"""LitServe 0.2.19 (Lightning AI) as a peer: a `LitAPI` around `benchmarks.peers.common`.

Set up as a LitServe user would for this model on a CPU: `accelerator="cpu"`, one inference
worker (`workers_per_device=1`) and one API server (`num_api_servers=1`). LitServe cannot run
in one process: that is five processes, all in the peer's environment and process group:

- the launcher (`python -m benchmarks.peers.litserve_peer`), which binds the socket, watches
  the others and, with `fast_queue=True` (LitServe's advice past 100 requests/s), runs the
  ZeroMQ broker (a thread) that carries the answers back to the API server;
- a `multiprocessing` manager (forked), which holds the request queue (every request is put on
  it and taken off it through the manager, a round trip each) and the workers' status;
- multiprocessing's resource tracker;
- the API server (forked): uvicorn (uvloop, httptools) and FastAPI; it parses the JSON body,
  queues it, and JSON-encodes the answer it gets back;
- the inference worker (spawned): it loads the model (`common.load`: onnxruntime's threads =
  the cores) and runs `decode_request` -> `predict` -> `encode_response`, so every body and
  answer is pickled across processes.

A SIGTERM to the launcher is made LitServe's Ctrl+C, which stops the others; left to itself,
the launcher dies alone, and the API server stays on the port answering 500s.

Batching: off, one request per `predict` (LitServe's `SingleLoop`); on, `max_batch_size=256`
*requests* per batch (not rows: ours counts rows) and `batch_timeout=1 ms`. LitServe's smallest
accepted wait, 0, is a busy poll of the manager's queue (`get_nowait` in a loop): idle, it kept
half a core busy in the worker and a third in the manager (2 cores). Any other timeout is
waited out in full, from when the worker turns to the queue, unless the batch fills first (ours
scores whatever is queued, at once); idle, the 1 ms polls cost 5-10% of a core in the worker
and as much in the manager. The handlers: mode *model*, `score_encoded` or
`score_encoded_many`; mode *predict*, `predict` or `predict_many`.

Protocol: LitServe takes any JSON body on `/predict`: mode *predict* is ours' `/predict` body
and answer; mode *model* sends `{"categorical": [[...]], "numerical": [[...]]}` and gets
`{"delay_probability": [...]}`. Bad input is a 400 (an `HTTPException` raised in the worker);
with batching on, one bad request fails its whole batch with that 400, as the worker
decodes, predicts and encodes a batch under one `try`. Readiness: `/health` answers 200 once
the worker has loaded the model.

Per request, turned off: uvicorn's access log (`access_log=False`), LitServe's and uvicorn's
info logs (`log_level="warning"`), the client file `run` writes by default
(`generate_client_file=False`). Left on, as LitServe gives no switch for them: the GZip
middleware (answers over 1,000 bytes, when the client accepts gzip; wrk does not), and a
request timeout of 30 s checked per request.

SWAP = None: LitServe has no API to load or replace a model in a running server (asked for in
https://github.com/Lightning-AI/LitServe/issues/271); the model lives in the worker process,
out of reach of a route added to the API server. Its users restart the server (or roll
replicas).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from benchmarks.peers.harness import json_probabilities, json_request

REQUIREMENTS = "benchmarks/peers/requirements/litserve.txt"
SWAP = None
MAX_BATCH = 256  # requests per batch (ours: 256 rows per onnxruntime call)
BATCH_TIMEOUT_S = 0.001  # 0 is accepted but busy-polls the manager's queue
FAST_QUEUE = True  # ZeroMQ for the answers, LitServe's advice past 100 requests/s
BAD_INPUT = (ValueError, KeyError, TypeError)  # what common raises on a malformed body


def command(
    python: str, model_dir: Path, port: int, mode: str, batching: bool, workdir: Path
) -> list[str]:
    """The launcher; the model folder comes from PEER_MODEL_DIR (set by the harness)."""
    argv = [python, "-m", "benchmarks.peers.litserve_peer", "--port", str(port), "--mode", mode]
    return [*argv, "--batching"] if batching else argv


def health(port: int) -> str:
    return f"http://127.0.0.1:{port}/health"


def endpoint(port: int, mode: str) -> str:
    return f"http://127.0.0.1:{port}/predict"


request = json_request
probabilities = json_probabilities


# --- the server side, in the peer's environment -----------------------------------------------


def __getattr__(name: str) -> type:
    """`FlightDelayAPI`, made on first use. The top level imports only the standard library, and
    the spawned inference worker unpickles the API by this module's name and this attribute."""
    if name != "FlightDelayAPI":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cls = globals()[name] = _api_class()
    return cls


def _api_class() -> type:
    import litserve as ls
    from fastapi import HTTPException

    from benchmarks.peers import common

    class FlightDelayAPI(ls.LitAPI):
        """One request (batching off) or a list of them (on), in the inference worker."""

        def __init__(self, mode: str, **batching: Any) -> None:
            super().__init__(**batching)
            self.mode = mode

        def setup(self, device: str) -> None:
            self.model = common.load()

        # no annotation on `request`, nor on encode_response's return: LitServe makes them the
        # route's FastAPI types (here strings, under `from __future__ import annotations`)
        def decode_request(self, request) -> Any:
            if self.mode == "predict":
                return request  # validated by common.predict(_many)
            try:
                return common.encoded(request)
            except BAD_INPUT as error:
                raise HTTPException(400, f"bad input: {error}") from None

        def predict(self, x: Any) -> Any:
            batched = self.max_batch_size > 1
            try:
                if self.mode == "predict":
                    if batched:
                        return common.predict_many(self.model, x)
                    return common.predict(self.model, x)
                if batched:
                    return [
                        {"delay_probability": p} for p in common.score_encoded_many(self.model, x)
                    ]
                return {"delay_probability": common.score_encoded(self.model, *x)}
            except BAD_INPUT as error:
                raise HTTPException(400, str(error)) from None

        def encode_response(self, output: Any):
            return output

    FlightDelayAPI.__module__ = __name__  # pickled by reference: this module, this name
    FlightDelayAPI.__qualname__ = "FlightDelayAPI"
    return FlightDelayAPI


def main(argv: list[str]) -> None:
    import litserve as ls

    parser = argparse.ArgumentParser(description="LitServe on the flight-delay model")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=["predict", "model"], required=True)
    parser.add_argument("--batching", action="store_true")
    args = parser.parse_args(argv)
    batching = (
        {"max_batch_size": MAX_BATCH, "batch_timeout": BATCH_TIMEOUT_S}
        if args.batching
        else {"max_batch_size": 1}
    )
    from benchmarks.peers.litserve_peer import FlightDelayAPI

    api = FlightDelayAPI(args.mode, **batching)
    # SIGTERM as Ctrl+C, which LitServe handles: it stops its processes, which a plain SIGTERM
    # to the launcher leaves running (the API server still on the port)
    signal.signal(signal.SIGTERM, _interrupt)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, fast_queue=FAST_QUEUE)
    server.run(
        host="127.0.0.1",
        port=args.port,
        num_api_servers=1,
        log_level="warning",
        generate_client_file=False,
        access_log=False,  # uvicorn's, through run's **kwargs
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    # run from the module imported under its own name, so the API class pickles by that name
    from benchmarks.peers import litserve_peer

    litserve_peer.main(sys.argv[1:])
