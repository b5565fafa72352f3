"""Benchmark: the API's throughput and latency against the HTTP floor and `mlflow models serve`.

One run, three servers, each a uvicorn process with one worker on this machine, all started
first, then loaded one after another from a separate process (wrk with one thread when it is
installed, else an asyncio + aiohttp client; keep-alive connections), in several rounds so
that a machine whose speed drifts (they are shared) moves every server alike; figures are
medians over the rounds:

- *ours*: `mlops serve` on the champion (micro-batching, features from the lookup tables);
- *floor*: a bare FastAPI endpoint on the same server settings that validates the same
  `/predict` body and returns a constant (`benchmarks/floor_app.py`);
- *mlflow*: `mlflow models serve` on the same registered model (ONNX pyfunc), sent the model's
  encoded inputs, since that server has no feature transform;
- *ours-unsettled* (on request): `mlops serve` with `MLOPS_SERVE__SETTLE_MS=0`, its batcher
  scoring what is queued at once instead of waiting for the requests it expects;
- *ours-mlp* (on request): `mlops serve` on a plain MLP (no numerical embeddings, one member,
  trained here once and registered without the alias), which parts the server's own cost from
  the default model's (a TabM-mini ensemble of 8 over periodic embeddings).

Then rows/s with 1,000 flights per request, and onnxruntime's in-process latency at batch 1 and
4096. The model is trained here (small, 2 epochs) unless `--home` already has a champion.

    python benchmarks/serving.py

`--pin` puts each server on the first CPU and wrk on the others (`benchmarks/cores.py`), so
that on a 2-core machine the client never takes the server's core, nor the server wrk's.

Writes benchmarks/results/serving.json and prints the rows for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

# ruff: noqa: E402
ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "benchmarks":
    sys.path[0] = str(ROOT)  # `serving` must be the package, not this file

import numpy as np
import pandas as pd
from rich.console import Console
from rich.logging import RichHandler

from benchmarks.cores import pin_client, pin_server, pinned
from benchmarks.peers.harness import JSON, MODES, PEERS, free_port, predictions
from pipelines.contract import OUTPUT

if TYPE_CHECKING:
    from serving.runtime import LoadedModel
    from training.config import ModelConfig

logger = logging.getLogger("benchmarks.serving")
console = Console(highlight=False, soft_wrap=True)
CONCURRENCY = (1, 8, 32, 128)
# ours' switches: one request per onnxruntime call, through the same queue; no wait for the
# requests a batch expects (serving.batcher's settle)
VARIANTS = {
    "ours-unbatched": {"MLOPS_SERVE__MAX_BATCH": "1"},
    "ours-unsettled": {"MLOPS_SERVE__SETTLE_MS": "0"},
}
SERVERS = (
    "ours",
    "ours-unbatched",
    "ours-unsettled",
    "ours-2-workers",
    "ours-mlp",
    "floor",
    "mlflow",
    "candidate",
)
OURS_BATCHING = {
    "ours": "on",
    "ours-mlp": "on",
    "candidate": "on",
    "ours-2-workers": "on",
    "ours-unbatched": "off (max_batch 1)",
    "ours-unsettled": "on, no wait for company (settle_ms 0)",
}


# --- setup ------------------------------------------------------------------------------


def prepare(home: Path) -> tuple[Path, str]:
    """A home with a feature table and a champion; returns (model folder, models:/ URI)."""
    from pipelines.layout import DataLayout
    from pipelines.storage import read_parquet_folder
    from serving.bundle import download_version
    from training.config import TrackingConfig
    from training.registry import GateConfig, champion_of, promote

    layout = DataLayout(home)
    if not layout.spec.exists():
        from pipelines.features import build_features_pandas
        from pipelines.ingest import ingest
        from pipelines.splits import SplitPlan

        logger.info("building the feature table under %s", home)
        ingest(layout)
        build_features_pandas(layout, SplitPlan())
    tracking = TrackingConfig(home)
    gate = GateConfig()
    client = tracking.client()
    champion = champion_of(client, gate)
    if champion is None:
        from training.config import FitConfig, ModelConfig
        from training.train import train

        logger.info("training a champion (2 epochs)")
        result = train(layout, tracking, ModelConfig(), FitConfig(epochs=2))
        promote(client, result.run_id, read_parquet_folder(layout.split("test")), gate)
        champion = champion_of(client, gate)
    bundle = download_version(
        client, gate.model_name, str(champion.version), home / "serving" / "models"
    )
    return bundle.folder, f"models:/{gate.model_name}/{champion.version}"


class Process:
    """A server process, up when its health URL answers 200."""

    def __init__(self, name: str, command: list[str], health: str, env: dict) -> None:
        self.name = name
        self.log = Path(f"/tmp/mlops-bench/{name}.log")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(  # its own group: a peer may run several processes
            command,
            env=env,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.health = health

    def wait(self, timeout: float = 240) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: see {self.log}")
            try:
                with urllib.request.urlopen(self.health, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"{self.name} did not become healthy: see {self.log}")

    def stop(self) -> None:
        """SIGTERM to its whole process group, SIGKILL to what is left of it after 30 s, and
        to any descendant that had left the group (BentoML's worker has its own session)."""
        import psutil

        try:
            descendants = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        for process in descendants:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


# --- load ---------------------------------------------------------------------------------


async def _load(url: str, body: bytes, concurrency: int, seconds: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    failures = 0
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(min(concurrency, 8)):  # warm the connections and the server
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
        stop = time.perf_counter() + seconds

        async def user() -> None:
            nonlocal failures
            while time.perf_counter() < stop:
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        failures += 1
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "failures": failures,
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


# wrk's report as one JSON line: the same figures as the aiohttp client's
WRK_SCRIPT = """
wrk.method = "POST"
%s
wrk.body = [==[%s]==]
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %%d, "failures": %%d, "requests_per_s": %%.3f, '
    .. '"p50_ms": %%.4f, "p99_ms": %%.4f, "p999_ms": %%.4f, "max_ms": %%.4f}\\n',
    summary.requests, e.connect + e.read + e.write + e.status + e.timeout,
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, latency.max / 1000))
end
"""


def wrk_command(
    url: str, body: bytes, concurrency: int, seconds: float, headers: dict[str, str] | None
) -> list[str]:
    script = Path(f"/tmp/mlops-bench/load-{os.getpid()}-{time.monotonic_ns()}.lua")
    lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or JSON).items())
    script.write_text(WRK_SCRIPT % (lines, body.decode()))
    duration = f"-d{max(1, round(seconds))}s"
    command = ["wrk", "-t1", f"-c{concurrency}", duration, "--timeout", "10s"]
    return [*command, "-s", str(script), url]


def load(
    url: str,
    body: bytes,
    concurrency: int,
    seconds: float,
    client: str = "wrk",
    headers: dict[str, str] | None = None,
) -> dict:
    """Drive `url` from a separate process (wrk, one thread; or the aiohttp client)."""
    if client == "wrk":
        command = wrk_command(url, body, concurrency, seconds, headers)
    else:
        payload = Path("/tmp/mlops-bench/body.json")
        payload.write_bytes(body)
        command = [sys.executable, __file__, "--loadgen", url, str(payload)]
        command += [str(concurrency), str(seconds)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the runs -----------------------------------------------------------------------------


def flights_body(home: Path, rows: int) -> tuple[bytes, pd.DataFrame]:
    from pipelines.layout import DataLayout
    from pipelines.storage import read_parquet_folder

    december = read_parquet_folder(DataLayout(home).month_partition("flights", "2013-12"))
    sample = december.dropna(subset=["tailnum"]).head(rows)
    flights = [
        {
            "carrier": r.carrier,
            "flight": int(r.flight),
            "tailnum": r.tailnum,
            "origin": r.origin,
            "dest": r.dest,
            "scheduled_departure": r.scheduled_departure.isoformat(),
            "distance": float(r.distance),
        }
        for r in sample.itertuples()
    ]
    return json.dumps({"flights": flights}).encode(), sample


def mlflow_body(model: LoadedModel, sample: pd.DataFrame) -> bytes:
    """The same flight as the MLflow server's model takes it: encoded tensors."""
    from serving.runtime import table_columns

    encoded = model.encode(table_columns(sample), len(sample))
    inputs = {"categorical": encoded.categorical.tolist(), "numerical": encoded.numerical.tolist()}
    return json.dumps({"inputs": inputs}).encode()


def onnx_latency(model: LoadedModel, sample: pd.DataFrame) -> dict:
    """In-process onnxruntime latency (the median of 50 calls) at batch 1 and 4096."""
    from serving.runtime import table_columns

    rows = pd.concat([sample] * (4096 // len(sample) + 1)).head(4096).reset_index(drop=True)
    encoded = model.encode(table_columns(rows), len(rows))
    out = {}
    for size in (1, 4096):
        times = []
        for _ in range(50):
            started = time.perf_counter()
            model.run(encoded.categorical[:size], encoded.numerical[:size])
            times.append(time.perf_counter() - started)
        out[f"batch_{size}_ms"] = statistics.median(times) * 1000
    out["rows_per_s_at_4096"] = 4096 / (out["batch_4096_ms"] / 1000)
    started = time.perf_counter()
    model.score_frame(rows.head(1000))
    out["score_1000_rows_ms"] = (time.perf_counter() - started) * 1000
    return out


@dataclass
class Target:
    """One server under load: how it starts, what it is sent, and what it must answer."""

    name: str  # ours, floor, mlflow, candidate, or <peer>/<mode>/<batching on|off>
    mode: str  # predict (flights, features in the server) or model (encoded inputs)
    command: list[str]
    health: str  # answers 200 once the model is ready
    url: str
    body: bytes
    env: dict[str, str]
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))
    # its answer's probabilities (None: it has no model, the floor), against the expected ones
    read: Callable[[dict], list[float]] | None = None
    swap: Callable[[int], None] | None = None  # serve model 0 (the champion) or 1 in place


def mlflow_probabilities(answer: dict) -> list[float]:
    """MLflow's pyfunc answers a model with named outputs as one record per row."""
    predictions = answer["predictions"]
    if isinstance(predictions, dict):
        return list(np.ravel(predictions[OUTPUT]))
    return [p[OUTPUT] if isinstance(p, dict) else p for p in predictions]


def builtin_targets(
    args: argparse.Namespace, home: Path, folder: Path, model_uri: str, bodies: dict, env: dict
) -> list[Target]:
    """Ours, the floor, `mlflow models serve` and ours on a candidate model."""
    made = []
    for name in args.servers:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        if name.startswith("ours") or name == "candidate":
            model_dir = {"candidate": args.candidate, "ours-mlp": args.mlp}.get(name, folder)
            workers = "2" if name == "ours-2-workers" else "1"
            command = [sys.executable, "-m", "mlops", "--home", str(home), "serve"]
            command += ["--model-dir", str(model_dir), "--port", str(port), "--workers", workers]
            made.append(
                Target(
                    name,
                    "predict",
                    command,
                    f"{base}/v2/health/ready",
                    f"{base}/predict",
                    bodies["predict"],
                    env | VARIANTS.get(name, {}),
                    read=predictions if model_dir == folder else None,
                )
            )
        elif name == "floor":
            command = [sys.executable, "-m", "uvicorn", "benchmarks.floor_app:app"]
            command += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
            made.append(
                Target(
                    name,
                    "predict",
                    command,
                    f"{base}/health",
                    f"{base}/predict",
                    bodies["predict"],
                    env,
                )
            )
        elif name == "mlflow":
            # `mlflow models serve` starts `uvicorn` from PATH: the one of this environment
            command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri]
            command += ["--env-manager", "local", "--workers", "1"]
            command += ["--port", str(port), "--host", "127.0.0.1"]
            made.append(
                Target(
                    name,
                    "model",
                    command,
                    f"{base}/health",
                    f"{base}/invocations",
                    bodies["mlflow"],
                    env,
                    read=mlflow_probabilities,
                )
            )
        else:
            raise ValueError(f"no server {name!r}: {', '.join(SERVERS)}")
    return made


def peer_targets(args: argparse.Namespace, folders: list[Path], flights: list, encoded: dict):
    """Each peer in each mode, its batching on and (where it has the switch) off."""
    from benchmarks.peers import harness

    made = []
    for peer in args.peers:
        module = harness.module(peer)
        python = harness.environment(peer)
        for mode in args.modes:
            for batching in args.batching:
                if batching == "on" and not getattr(module, "BATCHING", True):
                    continue  # KServe's Python server: batching is its Kubernetes sidecar's
                name = f"{peer}/{mode}/{batching}"
                port = free_port()
                workdir = Path(f"/tmp/mlops-bench/peers/{name}")
                shutil.rmtree(workdir, ignore_errors=True)
                workdir.mkdir(parents=True)
                command = module.command(
                    str(python), folders[0], port, mode, batching == "on", workdir
                )
                body, headers = module.request(mode, flights, encoded)
                env = os.environ | {"PYTHONPATH": str(ROOT), "PEER_MODEL_DIR": str(folders[0])}
                swap = None
                if getattr(module, "SWAP", True) is not None and len(folders) > 1:

                    def swap(i: int, module=module, port=port, workdir=workdir) -> None:
                        module.swap(port, folders[i], workdir)

                made.append(
                    Target(
                        name,
                        mode,
                        command,
                        module.health(port),
                        module.endpoint(port, mode),
                        body,
                        env,
                        headers,
                        lambda answer, m=module, k=mode: m.probabilities(k, answer),
                        swap,
                    )
                )
    return made


def ours_on_the_registry(home: Path, versions: list[str], body: bytes, env: dict) -> Target:
    """Ours following the registry's alias, as deployed: a swap moves the alias and asks
    /admin/reload (the alias back on the champion whatever happens: `restore_alias`)."""
    from training.config import TrackingConfig
    from training.registry import GateConfig

    port, token = free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlops", "--home", str(home), "serve"]
    command += ["--port", str(port), "--workers", "1"]
    env = env | {"MLOPS_SERVE__ADMIN_TOKEN": token, "MLOPS_SERVE__POLL_INTERVAL_S": "0"}
    gate, client = GateConfig(), TrackingConfig(home).client()

    def swap(i: int) -> None:
        from benchmarks.peers.harness import post

        client.set_registered_model_alias(gate.model_name, gate.alias, versions[i])
        auth = {"Authorization": f"Bearer {token}"} | JSON
        answer = post(f"{base}/admin/reload", b"{}", auth, timeout=120)
        if answer.get("version") != versions[i]:
            raise RuntimeError(f"ours did not swap to v{versions[i]}: {answer}")

    return Target(
        "ours/registry",
        "predict",
        command,
        f"{base}/v2/health/ready",
        f"{base}/predict",
        body,
        env,
        read=predictions,
        swap=swap,
    )


def restore_alias(home: Path, version: str) -> None:
    from training.config import TrackingConfig
    from training.registry import GateConfig

    gate = GateConfig()
    TrackingConfig(home).client().set_registered_model_alias(gate.model_name, gate.alias, version)


def check_answer(target: Target, expected: list[float]) -> float:
    """The largest difference between the target's answer and the expected probabilities;
    a server that answers something else is not worth timing."""
    from benchmarks.peers.harness import post

    got = target.read(post(target.url, target.body, target.headers)) if target.read else None
    if got is None:
        return 0.0
    difference = float(np.max(np.abs(np.asarray(got, dtype=float) - expected)))
    if len(got) != len(expected) or difference > 1e-5:
        raise RuntimeError(f"{target.name} answers {got}, not {list(expected)}")
    return difference


def start(targets: list[Target]) -> dict[str, Process]:
    """All up at once (an idle server costs little); none left running if one fails. Pinned
    with `--pin`."""
    running: dict[str, Process] = {}
    try:
        for t in targets:
            running[t.name] = Process(t.name, t.command, t.health, t.env)
        for server in running.values():
            server.wait()
            if pinned():  # --pin: the servers on the first CPU, the client on the others
                pin_server(server.process.pid)
    except BaseException:
        for server in running.values():
            server.stop()
        raise
    return running


def swaps_under_load(target: Target, count: int, expected: list[np.ndarray], seconds: float):
    """`count` swaps, alternating the models, under wrk at concurrency 32 (each swap one
    second after the last returned); the steady figures of the same server just before."""
    steady = load(target.url, target.body, 32, seconds, "wrk", target.headers)
    command = wrk_command(target.url, target.body, 32, 3600, target.headers)
    wrk = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    took, checked = [], 0
    try:
        time.sleep(1)
        for i in range(count):
            model = (i + 1) % 2
            started = time.perf_counter()
            target.swap(model)
            took.append(time.perf_counter() - started)
            checked += check_answer(target, expected[model]) <= 1e-5
            time.sleep(1)
    finally:
        wrk.send_signal(signal.SIGINT)
        out, _ = wrk.communicate(timeout=60)
    during = json.loads(out.strip().splitlines()[-1])
    return {
        "steady": steady,
        "during": during,
        "swaps": count,
        "answers_checked": checked,
        "swap_s": {"median": statistics.median(took), "max": max(took)},
        "p99_during_over_steady": during["p99_ms"] / steady["p99_ms"],
    }


def main(args: argparse.Namespace) -> None:
    home = args.home
    folder, model_uri = prepare(home)
    args.mlp = plain_mlp_folder(home) if "ours-mlp" in args.servers else None
    one, sample = flights_body(home, 1)
    thousand, big_sample = flights_body(home, 1000)
    from serving.bundle import read_bundle
    from serving.runtime import LoadedModel, table_columns

    model = LoadedModel.load(read_bundle(folder), threads=os.cpu_count() or 1)
    champion = model_uri.rsplit("/", 1)[1]
    folders, models = [folder], [model]
    if args.swaps:
        other, other_folder = swap_folder(home, args.swap_version, champion)
        folders.append(other_folder)
        models.append(LoadedModel.load(read_bundle(other_folder), threads=os.cpu_count() or 1))
    flights = json.loads(one)["flights"]
    encoded = model.encode(table_columns(sample), len(sample))
    encoded_body = {
        "categorical": encoded.categorical.tolist(),
        "numerical": encoded.numerical.tolist(),
    }
    expected = {
        "predict": [m.score_frame(sample).probabilities for m in models],
        "model": [m.run(encoded.categorical, encoded.numerical) for m in models],
    }
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = os.environ | {"MLOPS_HOME": str(home), "PYTHONPATH": str(ROOT), "PATH": path}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{(home / 'mlflow.db').resolve()}"
    if args.pin:
        pin_client()
    if args.peers and args.client != "wrk":
        raise SystemExit("the peers are loaded with wrk only (apt-get install wrk)")
    results: dict = {
        "date": datetime.now(UTC).date().isoformat(),
        "cpus": os.cpu_count(),
        "seconds_per_point": args.seconds,
        "rounds": args.rounds,
        "client": args.client,
        "pinned": args.pin,
        "model": model_uri,
        "onnx": onnx_latency(model, big_sample),
    }
    bodies = {"predict": one, "mlflow": mlflow_body(model, sample)}
    targets = builtin_targets(args, home, folder, model_uri, bodies, env)
    targets += peer_targets(args, folders, flights, encoded_body)
    rounds: dict[str, dict[str, list[dict]]] = {t.name: {} for t in targets}
    results["servers"] = {t.name: {"mode": t.mode} for t in targets}
    for mode in ("predict", "model"):  # one group up at a time: a dozen servers at most
        group = [t for t in targets if t.mode == mode]
        if not group:
            continue
        running = start(group)
        try:
            for target in group:
                results["servers"][target.name]["max_abs_diff"] = check_answer(
                    target, expected[mode][0]
                )
            for concurrency in args.concurrency:
                for turn in range(args.rounds):  # the servers back to back, round after round
                    for target in group:
                        figures = load(
                            target.url,
                            target.body,
                            concurrency,
                            args.seconds,
                            args.client,
                            target.headers,
                        )
                        rounds[target.name].setdefault(str(concurrency), []).append(figures)
                        logger.info(
                            "%s c=%d round %d: %s", target.name, concurrency, turn + 1, figures
                        )
            for target in group:
                results["servers"][target.name]["rss_mb"] = tree_rss_mb(running[target.name])
            if mode == "predict" and "ours" in running:
                ours = next(t for t in group if t.name == "ours")
                rows_1000 = load(ours.url, thousand, 4, args.seconds, args.client)
                rows_1000["rows_per_s"] = rows_1000["requests_per_s"] * 1000
                results["rows_1000"] = rows_1000
                logger.info("ours, 1,000 flights per request: %s", rows_1000)
            if mode == "predict":
                results["oip"] = open_inference_protocol(group, home, models[0])
            if mode == "predict" and args.swaps:
                # each peer that can swap, its batching on where it has it
                swapping = {}
                for t in sorted(group, key=lambda t: t.name.endswith("/on")):
                    if t.swap is not None:
                        swapping[t.name.split("/")[0]] = t
                results["swaps"] = {}
                for target in swapping.values():
                    results["swaps"][target.name] = swaps_under_load(
                        target, args.swaps, expected[mode], args.seconds
                    )
                    logger.info("%s swaps: %s", target.name, results["swaps"][target.name])
        finally:
            for server in running.values():
                server.stop()
    if args.swaps and "ours" in args.servers:
        target = ours_on_the_registry(home, [champion, other], one, env)
        running = start([target])
        try:
            results["swaps"]["ours/registry"] = swaps_under_load(
                target, args.swaps, expected["predict"], args.seconds
            )
        finally:
            running[target.name].stop()
            restore_alias(home, champion)
    for name, by_concurrency in rounds.items():
        results["servers"][name].update({c: summarize(runs) for c, runs in by_concurrency.items()})
    results["ratios"] = ratios(rounds, {t.name: t.mode for t in targets})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    logger.info("wrote %s", args.out)
    console.print()
    for line in markdown(results):
        console.print(line, markup=False)


def open_inference_protocol(group: list[Target], home: Path, model: LoadedModel) -> dict:
    """One tritonclient script (benchmarks/peers/oip_client.py), unchanged, against each V2
    server up (ours, MLServer, KServe) on 7 flights: each answer's largest difference from
    the model in process, as JSON and with the binary tensor extension (or the refusal)."""
    from benchmarks.peers.harness import OIP_SERVERS, oip_check

    body, sample = flights_body(home, 7)
    flights = Path("/tmp/mlops-bench/oip-flights.json")
    flights.write_text(json.dumps(json.loads(body)["flights"]))
    expected = model.score_frame(sample).probabilities
    out = {}
    for target in group:
        server = target.name.split("/")[0]
        if server not in OIP_SERVERS or server in out:
            continue
        answers = oip_check(urlsplit(target.url).netloc, flights)
        out[server] = {
            kind: float(np.max(np.abs(np.asarray(got) - expected)))
            if isinstance(got, list)
            else str(got)[:200]
            for kind, got in answers.items()
        }
        logger.info("the OIP client against %s: %s", server, out[server])
    return out


PLAIN_MLP_NOTE = Path("serving") / "plain-mlp-version"  # under the home: ours-mlp's version


def plain_mlp_folder(home: Path) -> Path:
    """A plain MLP's folder (the default width and depth; no numerical embeddings, one member),
    trained and registered on first use, then reused."""
    from training.config import ModelConfig

    noted = home / PLAIN_MLP_NOTE
    if not noted.exists():
        config = ModelConfig(numeric_embedding="none", members=1)
        noted.write_text(_trained_version(home, config, "a plain MLP for ours-mlp"))
    return _version_folder(home, noted.read_text())


def swap_folder(home: Path, version: str | None, champion: str) -> tuple[str, Path]:
    """Another registered version and its folder, for the swaps: `version`, or (None) the
    newest other than the champion (and ours-mlp's), or one trained here: other weights and
    width (64 x 2)."""
    from training.config import ModelConfig, TrackingConfig
    from training.registry import GateConfig

    if version is None:
        noted = home / PLAIN_MLP_NOTE
        skip = {champion, noted.read_text() if noted.exists() else ""}
        found = (
            TrackingConfig(home).client().search_model_versions(f"name='{GateConfig().model_name}'")
        )
        others = [str(v.version) for v in found if str(v.version) not in skip]
        if others:
            version = max(others, key=int)
        else:
            config = ModelConfig(width=64, depth=2)
            version = _trained_version(home, config, "another model for the swaps (64 x 2)")
    return version, _version_folder(home, version)


def _trained_version(home: Path, config: ModelConfig, what: str) -> str:
    """A model trained here for a comparison (1 epoch, seed 1) and registered without taking
    the alias: its version."""
    from pipelines.layout import DataLayout
    from training.config import FitConfig, TrackingConfig
    from training.registry import GateConfig, register
    from training.train import train

    logger.info("training %s (1 epoch)", what)
    tracking = TrackingConfig(home)
    result = train(DataLayout(home), tracking, config, FitConfig(1, seed=1))
    return str(register(tracking.client(), result.run_id, GateConfig()))


def _version_folder(home: Path, version: str) -> Path:
    """A registered version downloaded into the home's model cache (once)."""
    from serving.bundle import download_version
    from training.config import TrackingConfig
    from training.registry import GateConfig

    client, name = TrackingConfig(home).client(), GateConfig().model_name
    return download_version(client, name, version, home / "serving" / "models").folder


def tree_rss_mb(server: Process) -> float:
    """The resident memory of the server's process and all its children."""
    import psutil

    try:
        root = psutil.Process(server.process.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return float("nan")
    total = 0
    for process in tree:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


def ratios(rounds: dict[str, dict[str, list[dict]]], modes: dict[str, str]) -> dict:
    """Ours against each other server: throughput and p99, each the median over the rounds of
    the two servers' ratio in the same round where they ran in the same group, back to back;
    else (ours' /predict against a model-only server) the ratio of the medians."""
    if "ours" not in rounds:
        return {}
    out: dict[str, dict] = {}
    for name, by_concurrency in rounds.items():
        if name == "ours":
            continue
        out[name] = {}
        for c, runs in by_concurrency.items():
            mine = rounds["ours"].get(c)
            if not mine:
                continue
            paired = modes[name] == modes["ours"] and len(runs) == len(mine)
            figures = {}
            for key in ("requests_per_s", "p99_ms"):
                if paired:
                    figures[key] = statistics.median(
                        o[key] / t[key] for o, t in zip(mine, runs, strict=True)
                    )
                else:
                    figures[key] = statistics.median(o[key] for o in mine) / statistics.median(
                        t[key] for t in runs
                    )
            out[name][c] = figures
    return out


def summarize(runs: list[dict]) -> dict:
    """The median of each figure over the rounds, and every round's throughput."""
    out = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    out["failures"] = sum(run["failures"] for run in runs)
    out["requests_per_s_rounds"] = [run["requests_per_s"] for run in runs]
    return out


def markdown(results: dict) -> list[str]:
    lines = [
        f"{results['date']}, {results['cpus']} cores, {results['rounds']} rounds of "
        f"{results['seconds_per_point']} s per point (the servers of a mode back to back in "
        f"each round; medians), one worker process per server where it has the choice, load "
        f"from a separate process ({results.get('client', 'aiohttp')}). Mode *predict*: the "
        f"flight as ours' /predict takes it, features computed in the server; *model*: the "
        f"encoded inputs.",
        "",
        "| server | mode | batching | concurrency | requests/s | each round | p50 ms | p99 ms "
        "| failures | ours / it, throughput | ours / it, p99 | RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, figures in results["servers"].items():
        peer, _, batching = ([*name.split("/"), "", ""])[:3]
        batching = batching or OURS_BATCHING.get(name, "")
        for concurrency, f in figures.items():
            if not concurrency.isdigit():
                continue
            each = " / ".join(f"{r:,.0f}" for r in f["requests_per_s_rounds"])
            ratio = results["ratios"].get(name, {}).get(concurrency)
            versus = f"{ratio['requests_per_s']:.2f}x | {ratio['p99_ms']:.2f}x" if ratio else " | "
            lines.append(
                f"| {peer} | {figures['mode']} | {batching} | {concurrency} "
                f"| {f['requests_per_s']:,.0f} | {each} | {f['p50_ms']:.1f} | {f['p99_ms']:.1f} "
                f"| {f['failures']} | {versus} | {figures.get('rss_mb', float('nan')):,.0f} |"
            )
    if results.get("swaps"):
        lines += [
            "",
            "| server | swaps | answers checked | swap s median / max | requests | failures "
            "| steady p99 ms | p99 / p99.9 / max during ms | p99 during / steady |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, s in results["swaps"].items():
            d = s["during"]
            lines.append(
                f"| {name} | {s['swaps']} | {s['answers_checked']} | {s['swap_s']['median']:.2f}"
                f" / {s['swap_s']['max']:.2f} | {d['requests']:,} | {d['failures']} "
                f"| {s['steady']['p99_ms']:.1f} | {d['p99_ms']:.1f} / {d['p999_ms']:.1f} / "
                f"{d['max_ms']:.0f} | {s['p99_during_over_steady']:.2f}x |"
            )
    if results.get("oip"):
        lines += [
            "",
            "The same tritonclient script against each V2 server, 7 flights: the largest "
            "difference from the model in process, or the refusal.",
            "",
            "| server | JSON | binary tensor extension |",
            "|---|---|---|",
        ]
        for server, kinds in results["oip"].items():
            cells = [
                f"{v:.1e}" if isinstance(v, float) else v[:80]  # the client says "refused: ..."
                for v in (kinds.get("json"), kinds.get("binary"))
            ]
            lines.append(f"| {server} | {cells[0]} | {cells[1]} |")
    if "rows_1000" in results:
        f = results["rows_1000"]
        lines += [
            "",
            f"Ours, 1,000 flights per request (concurrency 4): {f['rows_per_s']:,.0f} rows/s, "
            f"p50 {f['p50_ms']:.0f} ms, p99 {f['p99_ms']:.0f} ms.",
        ]
    o = results["onnx"]
    lines.append(
        f"onnxruntime in process: batch 1 {o['batch_1_ms']:.3f} ms, batch 4096 "
        f"{o['batch_4096_ms']:.1f} ms ({o['rows_per_s_at_4096']:,.0f} rows/s); transform + encode"
        f" + onnxruntime for 1,000 flights {o['score_1000_rows_ms']:.0f} ms."
    )
    return lines


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path("/tmp/mlops-bench/serving"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/serving.json")
    parser.add_argument("--seconds", type=float, default=5.0, help="per point and round")
    parser.add_argument("--rounds", type=int, default=3, help="servers back to back, N times")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument(
        "--servers",
        nargs="*",
        default=["ours", "floor", "mlflow"],
        choices=SERVERS,
    )
    parser.add_argument(
        "--peers",
        nargs="*",
        default=[],
        help=f"the other model servers, each in its own environment: {', '.join(PEERS)}",
    )
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument(
        "--batching", nargs="+", default=["on", "off"], choices=["on", "off"], help="the peers'"
    )
    parser.add_argument(
        "--swap-version",
        help="the version the swaps alternate with the champion (default: the newest other "
        "registered one, or one trained for them)",
    )
    parser.add_argument("--swaps", type=int, default=0, help="swaps under load, per server")
    parser.add_argument(
        "--candidate",
        type=Path,
        help="another model folder (`mlops export`), served by ours as the server `candidate`",
    )
    parser.add_argument(
        "--client",
        choices=["wrk", "aiohttp"],
        default="wrk" if shutil.which("wrk") else "aiohttp",
        help="the load generator: wrk (one thread, C) when installed, else an aiohttp process",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="each server on the first CPU, the load generator on the others (benchmarks/cores.py)",
    )
    return parser.parse_args()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--loadgen":
        url, body_file, concurrency, seconds = sys.argv[2:6]
        figures = asyncio.run(
            _load(url, Path(body_file).read_bytes(), int(concurrency), float(seconds))
        )
        sys.stdout.write(json.dumps(figures) + "\n")
    else:
        logging.basicConfig(
            level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console)]
        )
        main(parse_args())
