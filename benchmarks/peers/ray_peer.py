"""Ray Serve 2.60.0 as a peer: one replica of a deployment that calls `benchmarks.peers.common`.

Set up as close to ours as Ray allows. `command` starts this module as a Ray driver that starts
a local Ray cluster of its own (`ray.init(address="local")`: the harness runs several servers
at once) and deploys one application from a declarative config written to the server's workdir
(`serve.json`, the config `serve deploy` takes): one deployment, one replica, the HTTP proxy on
the head node only. Ray cannot serve from one process: it runs 11 (`ps` during a smoke run):

- this driver (idle once the app is deployed; on SIGTERM it stops Ray: `ray.shutdown()`, not
  Serve's graceful shutdown, which hangs when the whole process group, GCS included, is
  signalled at once);
- `gcs_server`, `raylet`, the autoscaler's `monitor.py`, `log_monitor.py`, and a minimal
  `dashboard.py` (its usage-stats module only, no frontend: started even with the dashboard
  off), and the raylet's `DashboardAgent` and `RuntimeEnvAgent`;
- three Python workers (actors): the Serve controller, the HTTP proxy (uvicorn; it forwards
  each request to the replica as an actor call, and each answer back) and the replica, which
  holds the model. Ray starts its workers at nice 15; here at 0, as every other server.

Batching: `@serve.batch` (`max_batch_size=256` requests, not rows, and `batch_wait_timeout_s=0`,
the least it accepts: what is queued now, as ours), `max_ongoing_requests=256` (Serve's default
5 would cap every batch at 5: ray-project/ray#43288). Off: one request per call, the same
`max_ongoing_requests`. A batch is one `score_encoded_many` (mode model) or `predict_many` (mode
predict) call; if one request in a batch is bad, the batch is scored again one request at a time
so that only that one gets its 400. Threads: onnxruntime's come from `common.load` (cores); the
handler runs on the replica's user-code event loop (Serve's default: a thread of its own).

Logging: Serve's access log off (`enable_access_log=false`), Serve's logs at WARNING, worker logs
not streamed to the driver; Ray still writes its processes' logs under
/tmp/ray/session_*/logs (no line per request). Dashboard off, metrics collection off
(`RAY_enable_metrics_collection=0`: the proxy and the replica still count each request in
memory), usage stats off; Serve's task events are off by default. Ray 2.60 turns token
authentication on for a new local cluster: the token is made in the workdir, not ~/.ray.
Ray 2.55+ has an opt-in "throughput optimized" mode (`RAY_SERVE_THROUGHPUT_OPTIMIZED=1`, direct
ingress, HAProxy with `RAY_SERVE_ENABLE_HA_PROXY=1`); not used: this is Serve's default path.

Protocol: the proxy's HTTP on 127.0.0.1:`port`: POST `/predict` with ours' `/predict` body (mode
predict) or `/model` with the encoded tensors (mode model; the answer is
`{"delay_probability": [...]}`); GET `/ready` answers 200 (with the served folder) once the
replica is up with its model loaded. Bad input is a 400 `{"error": message}`.

Reload: `swap` changes the deployment's `user_config` (the model folder) in the same config and
applies it from a second driver (a subprocess of the peer's interpreter, connected to the running
cluster) with `ServeControllerClient.deploy_apps`, what `serve run config.yaml` calls (private
API: `serve deploy` needs the dashboard). The application's code version (its import path and
arguments) is unchanged, so Serve calls the live replica's `reconfigure` instead of replacing
the replica; `reconfigure` loads the new folder in a thread while the old model keeps serving,
then replaces the one reference. `swap` returns once Serve reports the application RUNNING and
the replica reports the new folder (3 to 5 s here, most of it the second driver's start).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.peers.harness import json_probabilities, json_request

REQUIREMENTS = "benchmarks/peers/requirements/ray.txt"
ROOT = Path(__file__).resolve().parents[2]
APP = "flights"
DEPLOYMENT = "Flights"
MAX_BATCH = 256  # requests per batch, as ours' 256 rows per onnxruntime call
CONFIG = "serve.json"  # the declarative config, in the server's workdir
CLUSTER = "cluster.json"  # the running cluster's GCS address, for `swap`
TOKEN = "auth_token"  # the cluster's token (Ray's token auth), kept in the workdir, not ~/.ray


def ray_environment(workdir: Path) -> dict[str, str]:
    """What the driver and `swap`'s second driver run with."""
    return {
        "RAY_worker_niceness": "0",  # Ray starts its workers (replica, proxy) at nice 15
        "RAY_enable_metrics_collection": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(workdir / TOKEN),
    }


def command(
    python: str, model_dir: Path, port: int, mode: str, batching: bool, workdir: Path
) -> list[str]:
    config = {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port},
        "logging_config": {"log_level": "WARNING", "enable_access_log": False},
        "applications": [
            {
                "name": APP,
                "route_prefix": "/",
                "import_path": "benchmarks.peers.ray_peer:application",
                "args": {"mode": mode, "batching": batching},
                "deployments": [
                    {
                        "name": DEPLOYMENT,
                        "num_replicas": 1,
                        "max_ongoing_requests": MAX_BATCH,
                        "user_config": {"model_dir": str(model_dir)},
                    }
                ],
            }
        ],
    }
    (workdir / CONFIG).write_text(json.dumps(config, indent=2))
    return [python, "-m", "benchmarks.peers.ray_peer", "serve", str(workdir)]


def health(port: int) -> str:
    return f"http://127.0.0.1:{port}/ready"


def endpoint(port: int, mode: str) -> str:
    return f"http://127.0.0.1:{port}/{'predict' if mode == 'predict' else 'model'}"


request = json_request
probabilities = json_probabilities


def swap(port: int, folder: Path, workdir: Path) -> None:
    python = json.loads((workdir / CLUSTER).read_text())["python"]  # the peer's interpreter
    argv = [python, "-m", "benchmarks.peers.ray_peer", "swap", str(workdir), str(folder)]
    env = os.environ | ray_environment(workdir) | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"Ray Serve swap failed: {done.stderr[-2000:]}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the replica's own word: the folder it serves
        try:
            with urllib.request.urlopen(health(port), timeout=5) as response:
                if json.loads(response.read())["model_dir"] == str(folder):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"Ray Serve still serves another folder than {folder}")


# --- the server side: run in the peer's environment ------------------------------------------


def application(args: dict[str, Any]) -> Any:
    """The Serve application (an app builder: `args` are the config's `args`)."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    from benchmarks.peers import common

    mode, batching = args["mode"], bool(args["batching"])

    def one(model: Any, item: Any) -> Any:
        if mode == "predict":
            return common.predict(model, item)
        return {"delay_probability": common.score_encoded(model, *item)}

    def many(model: Any, items: list[Any]) -> list[Any]:
        if mode == "predict":
            return common.predict_many(model, items)
        return [{"delay_probability": p} for p in common.score_encoded_many(model, items)]

    @serve.deployment
    class Flights:
        def __init__(self) -> None:
            self.model: Any = None  # the served model handle, replaced whole by reconfigure
            self.folder: str | None = None

        async def reconfigure(self, config: dict[str, Any]) -> None:
            folder = config["model_dir"]
            if folder != self.folder:  # load beside the served model, then swap the reference
                model = await asyncio.to_thread(common.load, folder)
                self.model, self.folder = model, folder

        @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=0.0)
        async def batch(self, items: list[Any]) -> list[Any]:
            model = self.model
            try:
                return many(model, items)
            except ValueError:  # one bad request: answer the others, that one gets its 400
                return [_answer_or_error(one, model, item) for item in items]

        async def __call__(self, request: Request) -> Response:
            if request.method == "GET":
                return JSONResponse({"model_dir": self.folder})
            try:
                body = json.loads(await request.body())
                item = body if mode == "predict" else common.encoded(body)
                answer = await self.batch(item) if batching else one(self.model, item)
            except (ValueError, KeyError, TypeError) as error:
                return JSONResponse({"error": str(error)}, 400)
            if isinstance(answer, ValueError):
                return JSONResponse({"error": str(answer)}, 400)
            return Response(json.dumps(answer).encode(), media_type="application/json")

    return Flights.bind()


def _answer_or_error(one: Any, model: Any, item: Any) -> Any:
    try:
        return one(model, item)
    except ValueError as error:
        return error


def serve_forever(workdir: Path) -> None:
    """The driver: a local Ray cluster, Serve, the config; then wait for SIGTERM."""
    import ray
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(json.loads((workdir / CONFIG).read_text()))
    token = workdir / TOKEN
    if not token.exists():
        token.touch(mode=0o600)
        token.write_text(secrets.token_hex(32))
    ray.init(
        address="local",  # a cluster of its own, even if another one runs on this machine
        namespace="serve",
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # after ray.init, which sets its own
    try:
        client = serve_start(
            http_options=config.http_options.model_dump(),
            global_logging_config=config.logging_config,
            proxy_location=config.proxy_location,
        )
        client.deploy_apps(config)
        cluster = {"address": ray.get_runtime_context().gcs_address, "python": sys.executable}
        (workdir / CLUSTER).write_text(json.dumps(cluster))
        while True:
            time.sleep(3600)
    finally:
        # not serve.shutdown(): a stop signals the whole process group, the GCS included, and
        # Serve's graceful shutdown then waits on a dying cluster; this stops Ray's processes,
        # and the workers (each in a process group of its own) exit when the raylet is gone
        ray.shutdown()


def apply_folder(workdir: Path, folder: Path) -> None:
    """A second driver: the same config with another `user_config`, applied to the cluster."""
    import ray
    from ray import serve
    from ray.serve.context import _connect
    from ray.serve.schema import ApplicationStatus, ServeDeploySchema

    path = workdir / CONFIG
    config = json.loads(path.read_text())
    config["applications"][0]["deployments"][0]["user_config"] = {"model_dir": str(folder)}
    path.write_text(json.dumps(config, indent=2))
    address = json.loads((workdir / CLUSTER).read_text())["address"]
    ray.init(address=address, namespace="serve", log_to_driver=False, configure_logging=False)
    try:
        _connect().deploy_apps(ServeDeploySchema.model_validate(config))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            app = serve.status().applications[APP]
            deployment = app.deployments[DEPLOYMENT]
            if app.status == ApplicationStatus.RUNNING and deployment.status == "HEALTHY":
                return
            if app.status == ApplicationStatus.DEPLOY_FAILED:
                raise RuntimeError(f"Ray Serve: {app.message} {deployment.message}")
            time.sleep(0.1)
        raise TimeoutError("Ray Serve did not apply the new user_config in 120 s")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Ray Serve peer: the driver, or a swap")
    parser.add_argument("action", choices=["serve", "swap"])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("folder", type=Path, nargs="?")
    args = parser.parse_args()
    os.environ.update(ray_environment(args.workdir))
    if args.action == "serve":
        serve_forever(args.workdir)
    else:
        apply_folder(args.workdir, args.folder)
