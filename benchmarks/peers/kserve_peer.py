"""KServe 0.21.0's Python model server (`kserve.ModelServer`) serving the flight-delay model.

Set-up: `python -m benchmarks.peers.kserve_peer` builds a `kserve.Model` whose `load` calls
`common.load` (the checks, the parity check, onnxruntime threads = the cores) and whose
`predict` scores with common's functions, and starts `kserve.ModelServer` on it.

- Processes: one (`--workers 1`: uvicorn in the server process, no multiprocess REST server);
  gRPC is off (`--enable_grpc false`). KServe binds 0.0.0.0 with no option for the host: the
  REST server is subclassed here to bind 127.0.0.1.
- Protocol: the Open Inference Protocol (V2) over REST, `POST /v2/models/flight-delay/infer`,
  JSON or the binary tensor extension. Mode model: the tensors `categorical` (INT64 [n, k])
  and `numerical` (FP32 [n, m]). Mode predict: the raw flights as ours' V2 inputs (one 1-D
  tensor per field, the datatypes of `serving.protocols.V2_INPUTS`) through `common.predict`,
  so that one V2 client works against ours and this server. (KServe's V1 route,
  `/v1/models/flight-delay:predict`, would take ours' `{"flights": [...]}` body as it is.)
  Either way the answer is the FP32 tensor `delay_probability` [n].
- Batching: none in the server. KServe batches in its agent, a Go sidecar that the
  InferenceService's `batcher` spec adds in Kubernetes; it is not in the Python package. So
  `BATCHING` is False and `command` refuses `batching=True`: one request per `predict` call.
- `predict` is synchronous and runs on the event loop, as KServe's own sklearn and xgboost
  servers do (KServe's own threads are for its default executor, which `predict` does not use).
- Logging: uvicorn's access log and KServe's per-request timing lines (`kserve.trace`, from its
  TimingMiddleware) are set to WARNING, and `--enable_latency_logging false` drops the
  per-request latency line. The TimingMiddleware still times each request (it cannot be
  removed by an option), and KServe's Prometheus histograms (`/metrics`) stay on, as ours
  keeps /metrics. FastAPI's OpenTelemetry bridge is off, as in ours (KServe builds its app at
  import, so its private config is set), and the deprecation warning that KServe's
  ORJSONResponse raises on every answer is filtered. Bad input is KServe's 400 (`InvalidInput`),
  logged with its traceback at ERROR by KServe.
- Reload: the model repository extension. `swap` writes the new folder into the workdir and
  calls `POST /v2/repository/models/flight-delay/load`: the repository below loads a new model
  on a thread (the old one keeps answering) and then replaces it in the registry.
"""

from __future__ import annotations

import argparse
import sys
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.peers.harness import v2_probabilities, v2_request

REQUIREMENTS = "benchmarks/peers/requirements/kserve.txt"
MODEL = "flight-delay"  # ours' model name: one V2 client works against both
OUTPUT = "delay_probability"
BATCHING = False  # no server-side batching in KServe's Python server
TARGET = "model_dir"  # the workdir's file naming the folder that a repository load loads


def command(
    python: str, model_dir: Path, port: int, mode: str, batching: bool, workdir: Path
) -> list[str]:
    if batching:
        raise ValueError("KServe's Python model server has no batching (its agent batches)")
    (workdir / TARGET).write_text(str(model_dir))
    return [
        python,
        "-m",
        "benchmarks.peers.kserve_peer",
        "--http_port",
        str(port),
        "--workers",
        "1",
        "--enable_grpc",
        "false",
        "--enable_latency_logging",
        "false",
        "--model_name",
        MODEL,
        "--peer-mode",
        mode,
        "--peer-workdir",
        str(workdir),
    ]


def health(port: int) -> str:
    return f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready"


def endpoint(port: int, mode: str) -> str:
    return f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer"


request = v2_request
probabilities = v2_probabilities


def swap(port: int, folder: Path, workdir: Path) -> None:
    (workdir / TARGET).write_text(str(folder))
    url = f"http://127.0.0.1:{port}/v2/repository/models/{MODEL}/load"
    with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=120):
        pass  # 200 once the new model is ready and registered


# --- the server side: KServe's venv -----------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False)  # the rest of argv is KServe's
    parser.add_argument("--peer-mode", choices=["model", "predict"], required=True)
    parser.add_argument("--peer-workdir", type=Path, required=True)
    ours, _ = parser.parse_known_args()

    import asyncio
    import copy
    import warnings

    import kserve
    import kserve.model_server
    import numpy as np
    from kserve.errors import InvalidInput
    from kserve.logging import KSERVE_LOG_CONFIG, configure_logging
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
    from kserve.utils.utils import generate_uuid

    from benchmarks.peers import common

    # KServe's app is built at import, past FastAPI's `telemetry` argument: its OpenTelemetry
    # bridge (FastAPI 0.16x) asks the global providers on every request, off as in ours
    telemetry = getattr(kserve.model_server.app, "_telemetry", None)
    if telemetry is not None:
        telemetry.update(tracing=False, metrics=False, logs=False)
    # KServe's ORJSONResponse warns on every answer under FastAPI 0.16x
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
    quiet = copy.deepcopy(KSERVE_LOG_CONFIG)  # no line per request
    for name in ("uvicorn.access", "kserve.trace"):
        quiet["loggers"][name]["level"] = "WARNING"
    configure_logging(quiet)  # before ModelServer(), which then leaves logging as it is

    class LoopbackRESTServer(kserve.model_server.RESTServer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.config.host = "127.0.0.1"

    kserve.model_server.RESTServer = LoopbackRESTServer

    class FlightDelay(kserve.Model):
        def __init__(self, name: str, mode: str, folder: str) -> None:
            super().__init__(name)
            self.mode, self.folder = mode, folder

        def load(self) -> bool:
            self.model = common.load(self.folder)
            self.ready = True
            return self.ready

        def predict(self, payload: InferRequest, headers: dict | None = None) -> InferResponse:
            inputs = {tensor.name: tensor for tensor in payload.inputs}
            try:
                if self.mode == "model":
                    scores = common.score_encoded(
                        self.model,
                        inputs["categorical"].as_numpy().astype(np.int64),
                        inputs["numerical"].as_numpy().astype(np.float32),
                    )
                else:
                    columns = {name: _values(t.as_numpy()) for name, t in inputs.items()}
                    answer = common.predict(
                        self.model, {"flights": common.flights_of_columns(columns)}
                    )
                    scores = [p["delay_probability"] for p in answer["predictions"]]
            except (KeyError, ValueError) as error:  # ours' validation: a ValueError
                raise InvalidInput(f"{type(error).__name__}: {error}") from None
            output = InferOutput(name=OUTPUT, shape=[len(scores)], datatype="FP32")
            output.set_data_from_numpy(np.asarray(scores, dtype=np.float32), binary_data=False)
            return InferResponse(
                response_id=payload.id or generate_uuid(),  # V2 answers carry an id
                model_name=self.name,
                infer_outputs=[output],
                use_binary_outputs=payload.use_binary_outputs,
                requested_outputs=payload.request_outputs,
            )

    class Repository(kserve.ModelRepository):
        """Loads the folder named in the workdir: the repository extension's `load`."""

        async def load(self, name: str) -> bool:
            folder = (ours.peer_workdir / TARGET).read_text()
            model = FlightDelay(name, ours.peer_mode, folder)
            await asyncio.to_thread(model.load)  # the old model keeps answering meanwhile
            self.update(model)
            return model.ready

    model = FlightDelay(MODEL, ours.peer_mode, (ours.peer_workdir / TARGET).read_text())
    model.load()
    server = kserve.ModelServer(registered_models=Repository(str(ours.peer_workdir)))
    server.start([model])


def _values(array: Any) -> list:
    """A V2 tensor's values: BYTES as text (JSON sends str, the binary extension bytes)."""
    values = array.reshape(-1).tolist()
    return [v.decode() if isinstance(v, bytes) else v for v in values]


if __name__ == "__main__":
    sys.exit(main())
