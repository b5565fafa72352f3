"""TorchServe 0.12.0 as a peer: one Python worker whose custom handler calls
`benchmarks.peers.common`.

TorchServe is in limited maintenance: 0.12.0 (September 2024) is its last release, and its
README says it is no longer actively maintained (no planned updates, bug fixes or security
patches); it is here because users still pick it.

Set up as close to ours as it allows. `command` writes the server's files into its workdir
(`config.properties`, a log4j2 configuration, a model store holding the model as an unarchived
"no-archive" directory: `MAR-INF/MANIFEST.json` naming this module as the handler, and a
`model-config.yaml` naming the model folder) and starts the Java frontend directly, with the
argv `torchserve --start` builds (the CLI keeps one pid file in /tmp and refuses to start a
second TorchServe on the machine; the harness runs several at once). It runs two processes: the
JVM (Netty HTTP on 127.0.0.1:`port` with its default threads, one per core; the management API
on another local port; two idle gRPC servers on ephemeral ports, which cannot be turned off;
the JVM's default heap) and one Python worker (`ts/model_service_worker.py`,
`minWorkers = maxWorkers = 1`) that the JVM feeds over a Unix socket. The worker imports torch
(its protocol module does) although no torch model is involved: the handler loads the ONNX
bundle with `common.load` (onnxruntime's threads = cores).

Batching: TorchServe's own, in the frontend: `batchSize` 256 (requests, not rows) and
`maxBatchDelay` 1 ms; the worker gets up to 256 queued requests in one `handle` call: one
`score_encoded_many` (mode model) or `predict_many` (mode predict). 1 ms is the least that
batches greedily: 0 in the model config is ignored (the default 100 ms instead) and, through the
management API, ends every batch at its second request (`Model.pollBatch`); with 1 ms the
frontend takes every queued request and waits at most 1 ms for more. Off: `batchSize` 1.
`job_queue_size` is 1024 (the default 100 would answer 503s at the harness's highest
concurrency). One bad request in a batch: the batch is scored again one request at a time, so
that only that one gets its 400.

Logging: the access log, TorchServe's own logs and its metric logs are off (log4j2 at WARN to
the console, no files); the handler sets the worker's Python logging to WARNING, which silences
its per-request line (`Backend received inference at`) and the per-batch `PredictionTime`
metric line it prints for the frontend. Metrics API off, system metrics off, token
authorization off, config snapshots off. `decode_input_request=false`: the handler gets the raw
bodies and parses them itself, so that bad JSON is its 400.

Protocol: POST `/predictions/flights` with ours' `/predict` body (mode predict) or the encoded
tensors (mode model; the answer is `{"delay_probability": [...]}`), `Content-Type:
application/json`; bad input is a 400 `{"error": message}`. No KServe envelope. Health is a GET
on the same URL, answered by the handler (so only once the worker has loaded the model):
`/ping` answers 200 while the worker is still loading.

Reload: `swap` uses the management API (`enable_model_api=true`): it registers the new folder as
the next version of the same model and waits for the management API to describe its worker
READY (not `synchronous=true`, which holds a Netty event loop shared with the inference API
for the whole load: seconds of stalled requests), makes it the default, waits for the old
version's queue to drain (its unregister drops still-queued requests unanswered and fails the
batch in its worker), then unregisters it. For the few seconds of a swap two workers (two models
in memory) run.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.peers.harness import free_port, json_probabilities, json_request

REQUIREMENTS = "benchmarks/peers/requirements/torchserve.txt"
MODEL = "flights"
MAX_BATCH = 256  # requests per batch, as ours' 256 rows per onnxruntime call
MAX_BATCH_DELAY_MS = 1  # the least that batches greedily (see the docstring)
DRAIN_S = 1.0  # after the old version's queue is empty, for the batch its worker holds
STATE = "torchserve.json"  # the management port, the served version, the batch settings

LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration>
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT">
      <PatternLayout pattern="%d{ISO8601} [%-5p] %t %c - %m%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Logger name="ACCESS_LOG" level="off"/>
    <Logger name="TS_METRICS" level="off"/>
    <Logger name="MODEL_METRICS" level="off"/>
    <Logger name="MODEL_LOG" level="warn"/>
    <Logger name="io.netty" level="error"/>
    <Logger name="org.apache" level="off"/>
    <Root level="warn"><AppenderRef ref="STDOUT"/></Root>
  </Loggers>
</Configuration>
"""


def _write_version(store: Path, version: int, model_dir: Path, mode: str, batching: bool) -> str:
    """The model as TorchServe's unarchived format: a folder in the model store."""
    name = f"{MODEL}-v{version}"
    (store / name / "MAR-INF").mkdir(parents=True)
    manifest = {
        "createdOn": time.strftime("%d/%m/%Y %H:%M:%S"),
        "runtime": "python",
        "model": {
            "modelName": MODEL,
            "handler": "benchmarks.peers.torchserve_peer",
            "modelVersion": str(version),
            "configFile": "model-config.yaml",
        },
        "archiverVersion": "0.12.0",
    }
    (store / name / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest, indent=2))
    config = {  # JSON is YAML
        "minWorkers": 1,
        "maxWorkers": 1,
        "batchSize": MAX_BATCH if batching else 1,
        "maxBatchDelay": MAX_BATCH_DELAY_MS,
        "responseTimeout": 120,
        "handler": {"model_dir": str(model_dir), "mode": mode},
    }
    (store / name / "model-config.yaml").write_text(json.dumps(config, indent=2))
    return name


def command(
    python: str, model_dir: Path, port: int, mode: str, batching: bool, workdir: Path
) -> list[str]:
    store, tmp = workdir / "store", workdir / "tmp"
    store.mkdir()
    tmp.mkdir()
    name = _write_version(store, 1, model_dir, mode, batching)
    management = free_port()
    properties = {
        "inference_address": f"http://127.0.0.1:{port}",
        "management_address": f"http://127.0.0.1:{management}",
        "grpc_inference_address": "127.0.0.1",
        "grpc_inference_port": 0,  # gRPC cannot be turned off: ephemeral ports, unused
        "grpc_management_address": "127.0.0.1",
        "grpc_management_port": 0,
        "enable_metrics_api": "false",
        "disable_system_metrics": "true",
        "disable_token_authorization": "true",
        "enable_model_api": "true",
        "default_workers_per_model": 1,
        "job_queue_size": 1024,
        "decode_input_request": "false",
        "model_store": str(store),
        "load_models": f"{MODEL}={name}",
    }
    config = workdir / "config.properties"
    config.write_text("".join(f"{key}={value}\n" for key, value in properties.items()))
    (workdir / "log4j2.xml").write_text(LOG4J2)
    state = {"management": management, "version": 1, "mode": mode, "batching": batching}
    (workdir / STATE).write_text(json.dumps(state))
    venv = Path(python).parent.parent  # the venv's bin/python, not resolved (a symlink)
    home = next((venv / "lib").glob("python3*/site-packages/ts")).parent
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home, "bin", "java")) if java_home else "java"
    return [
        java,
        f"-Dmodel_server_home={home}",
        f"-Dlog4j.configurationFile=file://{workdir / 'log4j2.xml'}",
        f"-Djava.io.tmpdir={tmp}",
        "-cp",
        f".:{home / 'ts' / 'frontend' / '*'}",
        "org.pytorch.serve.ModelServer",
        "--python",
        python,
        "-f",
        str(config),
        "-s",
        str(store),
        "-ncs",
    ]


def health(port: int) -> str:
    """A GET (no body, no Content-Type) the handler answers: `/ping` says 200 while the worker
    is still loading (pytorch/serve#2434); this waits in the queue until the worker is up."""
    return f"http://127.0.0.1:{port}/predictions/{MODEL}"


def endpoint(port: int, mode: str) -> str:
    return f"http://127.0.0.1:{port}/predictions/{MODEL}"


request = json_request
probabilities = json_probabilities


def swap(port: int, folder: Path, workdir: Path) -> None:
    """Register `folder` as the next version, make it the default, unregister the old one."""
    state = json.loads((workdir / STATE).read_text())
    old, new = state["version"], state["version"] + 1
    name = _write_version(workdir / "store", new, folder, state["mode"], state["batching"])
    management = f"http://127.0.0.1:{state['management']}/models"
    batch = MAX_BATCH if state["batching"] else 1
    # synchronous=false: a synchronous register blocks a Netty event loop, shared with the
    # inference API, until the new worker is up (seconds of stalled requests on the connections
    # it serves); instead, wait for the management API to describe the new worker READY
    _call(
        "POST",
        f"{management}?url={name}&model_name={MODEL}&initial_workers=1&synchronous=false"
        f"&batch_size={batch}&max_batch_delay={MAX_BATCH_DELAY_MS}",
    )
    _wait(management, new, lambda d: bool(d["workers"]) and d["workers"][0]["status"] == "READY")
    _call("PUT", f"{management}/{MODEL}/{new}/set-default")
    # Unregistering drops the requests still queued for the old version, unanswered, and 500s
    # the batch its worker holds (pytorch/serve#1101): wait for its queue to drain first.
    _wait(management, old, lambda d: d["jobQueueStatus"]["pendingRequests"] == 0)
    time.sleep(DRAIN_S)
    _call("DELETE", f"{management}/{MODEL}/{old}")
    state["version"] = new
    (workdir / STATE).write_text(json.dumps(state))


def _wait(
    management: str, version: int, done: Callable[[dict], bool], timeout: float = 120
) -> None:
    """Until the management API's description of that version satisfies `done`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        (described,) = _call("GET", f"{management}/{MODEL}/{version}")
        if done(described):
            return
        time.sleep(0.05)
    raise TimeoutError(f"TorchServe: {MODEL} version {version} not ready in {timeout} s")


def _call(method: str, url: str) -> Any:
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=300) as answer:
        return json.loads(answer.read())


# --- the server side: TorchServe's worker imports this module as the handler -----------------


class Handler:
    """TorchServe's custom service (it takes a handler module's only class)."""

    def initialize(self, context: Any) -> None:
        import logging

        from benchmarks.peers import common

        logging.getLogger().setLevel(logging.WARNING)  # the worker's per-request INFO lines
        config = context.model_yaml_config["handler"]
        self.common = common
        self.mode, self.folder = config["mode"], config["model_dir"]
        self.model = common.load(self.folder)

    def handle(self, data: list[dict], context: Any) -> list[bytes]:
        """One call per batch: each request's raw body in, each request's answer out."""
        answers: list[bytes | None] = [None] * len(data)
        parsed: list[tuple[int, Any]] = []
        for index, row in enumerate(data):
            raw = row.get("body") or row.get("data")
            if not raw and not context.get_request_header(index, "content-type"):  # `health`
                context.set_response_content_type(index, "application/json")
                answers[index] = json.dumps({"model_dir": self.folder}).encode()
                continue
            try:
                body = json.loads(raw or b"")
                parsed.append((index, body if self.mode == "predict" else self.encoded(body)))
            except (ValueError, KeyError, TypeError) as error:
                answers[index] = self.error(context, index, error)
        results: list[Any] = []
        if len(parsed) == 1:
            results = [self.one_or_error(parsed[0][1])]
        elif parsed:
            try:
                results = self.many([item for _, item in parsed])
            except ValueError:  # one bad request: answer the others, that one gets its 400
                results = [self.one_or_error(item) for _, item in parsed]
        for (index, _), result in zip(parsed, results, strict=True):
            if isinstance(result, ValueError):
                answers[index] = self.error(context, index, result)
            else:
                context.set_response_content_type(index, "application/json")
                answers[index] = json.dumps(result).encode()
        return answers

    def encoded(self, body: Any) -> Any:
        return self.common.encoded(body)

    def one(self, item: Any) -> Any:
        if self.mode == "predict":
            return self.common.predict(self.model, item)
        return {"delay_probability": self.common.score_encoded(self.model, *item)}

    def many(self, items: list[Any]) -> list[Any]:
        if self.mode == "predict":
            return self.common.predict_many(self.model, items)
        scored = self.common.score_encoded_many(self.model, items)
        return [{"delay_probability": p} for p in scored]

    def one_or_error(self, item: Any) -> Any:
        try:
            return self.one(item)
        except ValueError as error:
            return error

    @staticmethod
    def error(context: Any, index: int, error: Exception) -> bytes:
        context.set_response_status(400, "Bad Request", index)
        context.set_response_content_type(index, "application/json")
        return json.dumps({"error": str(error)}).encode()
