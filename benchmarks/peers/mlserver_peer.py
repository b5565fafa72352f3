"""MLServer 1.7.1 (Seldon) serving the flight-delay model through a custom runtime.

Set-up: `mlserver start <workdir>` on a `settings.json` and one `model-settings.json` that this
module writes; the runtime (`FlightDelayRuntime`, built on first use so that this module's top
level stays standard-library) loads the folder with `common.load` (the checks, the parity
check, onnxruntime threads = the cores) and scores with common's functions.

- Processes: `parallel_workers` 0 keeps inference in the one server process (REST, gRPC and
  the metrics server are three servers on one event loop there). MLServer's default is 1: one
  inference worker process behind the server, over IPC; `PEER_MLSERVER_WORKERS=N` (read by
  `command`) sets N workers instead.
- Protocol: the Open Inference Protocol (V2) over REST, `POST /v2/models/flight-delay/infer`.
  Mode model: the tensors `categorical` (INT64 [n, k]) and `numerical` (FP32 [n, m]). Mode
  predict: the raw flights as ours' V2 inputs (one 1-D tensor per field, the datatypes of
  `serving.protocols.V2_INPUTS`), validated by ours' validator through `common.predict_many`:
  MLServer takes arbitrary JSON only on custom handlers, which bypass adaptive batching. Either
  way the answer is the FP32 tensor `delay_probability` [n]. MLServer's REST server has no
  binary tensor extension: a binary request is refused.
- Batching: MLServer's adaptive batching, on with `max_batch_size` 256 *requests* (not rows)
  and `max_batch_time` 1 microsecond: it takes what is queued and does not wait (any value
  above 0 turns it on; it merges the requests' tensors along the first axis, one `predict`
  call per batch, and splits the answer back). Off: `max_batch_size` 0, one request a call.
  A bad request fails the whole batch it was merged into (400 for each), and the 10,000-flight
  limit holds per batch (chunks of 10,000 rows), not per request, since the runtime sees only
  the merged request.
- Scoring runs inline in the runtime's `async predict`, as MLServer's own runtimes do (MLServer
  spreads CPU work over `parallel_workers`, not threads).
- Logging: `debug` false turns uvicorn's access log (and the health routes' logs) off and logs
  at INFO; nothing is logged per request. Prometheus metrics stay on (as ours keeps /metrics),
  on their own port, in multiprocess mode (files under the workdir); the gzip middleware stays
  (it compresses only for clients that ask); no tracing, no Kafka, no response cache.
- Reload: the model repository extension. `swap` rewrites the model settings' `uri` and calls
  `POST /v2/repository/models/flight-delay/load`: MLServer loads the new model (the load runs
  on a thread here, so the old one keeps answering), registers it, then unloads the old one.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.peers.harness import free_port, v2_probabilities, v2_request

REQUIREMENTS = "benchmarks/peers/requirements/mlserver.txt"
MODEL = "flight-delay"  # ours' model name: one V2 client works against both
OUTPUT = "delay_probability"
RUNTIME = "benchmarks.peers.mlserver_peer.FlightDelayRuntime"
WORKERS = "PEER_MLSERVER_WORKERS"  # inference worker processes; 0: inference in the server
MAX_BATCH_REQUESTS = 256
MAX_BATCH_TIME_S = 1e-6  # the smallest wait that still turns adaptive batching on


def command(
    python: str, model_dir: Path, port: int, mode: str, batching: bool, workdir: Path
) -> list[str]:
    settings = {
        "debug": False,
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "metrics_dir": str(workdir / "metrics"),
        "environments_dir": str(workdir / "envs"),
        "parallel_workers": int(os.environ.get(WORKERS, "0")),
    }
    (workdir / "settings.json").write_text(json.dumps(settings, indent=2))
    _write_model_settings(workdir, model_dir, mode, batching)
    return [str(Path(python).parent / "mlserver"), "start", str(workdir)]


def health(port: int) -> str:
    return f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready"


def endpoint(port: int, mode: str) -> str:
    return f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer"


request = v2_request
probabilities = v2_probabilities


def swap(port: int, folder: Path, workdir: Path) -> None:
    settings = json.loads((workdir / MODEL / "model-settings.json").read_text())
    settings["parameters"]["uri"] = str(folder)
    (workdir / MODEL / "model-settings.json").write_text(json.dumps(settings, indent=2))
    url = f"http://127.0.0.1:{port}/v2/repository/models/{MODEL}/load"
    with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=120):
        pass  # 200 once the new model is registered and the old one unloaded


def _write_model_settings(workdir: Path, folder: Path, mode: str, batching: bool) -> None:
    settings = {
        "name": MODEL,
        "implementation": RUNTIME,
        "max_batch_size": MAX_BATCH_REQUESTS if batching else 0,
        "max_batch_time": MAX_BATCH_TIME_S if batching else 0,
        "parameters": {"uri": str(folder), "extra": {"mode": mode, "batching": batching}},
    }
    (workdir / MODEL).mkdir(exist_ok=True)
    (workdir / MODEL / "model-settings.json").write_text(json.dumps(settings, indent=2))


# --- the server side: MLServer's venv, imported by `mlserver start` -------------------------


def __getattr__(name: str) -> Any:
    """`FlightDelayRuntime`, built on first use (MLServer imports it by its dotted path)."""
    if name == "FlightDelayRuntime":
        globals()[name] = _runtime()
        return globals()[name]
    raise AttributeError(name)


def _runtime() -> type:
    import asyncio

    import numpy as np
    from mlserver import MLModel
    from mlserver.codecs import NumpyCodec, StringCodec
    from mlserver.errors import MLServerError
    from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

    from benchmarks.peers import common

    class FlightDelayRuntime(MLModel):
        async def load(self) -> bool:
            extra = self.settings.parameters.extra
            self._mode, self._batching = extra["mode"], extra["batching"]
            # on a thread: during a repository reload the old model keeps answering
            self._model = await asyncio.to_thread(common.load, self.settings.parameters.uri)
            return True

        async def predict(self, payload: InferenceRequest) -> InferenceResponse:
            inputs = {tensor.name: tensor for tensor in payload.inputs}
            try:
                if self._mode == "model":
                    categorical = NumpyCodec.decode_input(inputs["categorical"])
                    numerical = NumpyCodec.decode_input(inputs["numerical"])
                    scores = common.score_encoded(
                        self._model, categorical.astype(np.int64), numerical.astype(np.float32)
                    )
                else:
                    scores = self._predict(inputs)
            except (KeyError, ValueError) as error:  # ours' validation: a ValueError
                raise MLServerError(f"{type(error).__name__}: {error}", 400) from None
            output = ResponseOutput(name=OUTPUT, shape=[len(scores)], datatype="FP32", data=scores)
            return InferenceResponse(
                model_name=self.name, model_version=self.version, outputs=[output]
            )

        def _predict(self, inputs: dict) -> list[float]:
            columns = {
                name: StringCodec.decode_input(tensor)
                if tensor.datatype == "BYTES"
                else NumpyCodec.decode_input(tensor).reshape(-1).tolist()
                for name, tensor in inputs.items()
            }
            flights = common.flights_of_columns(columns)
            step = common.MAX_ROWS if self._batching else max(1, len(flights))
            bodies = [{"flights": flights[i : i + step]} for i in range(0, len(flights), step)]
            answers = common.predict_many(self._model, bodies or [{"flights": []}])
            return [p["delay_probability"] for a in answers for p in a["predictions"]]

    return FlightDelayRuntime
