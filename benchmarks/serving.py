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
  encoded inputs, since that server has no feature transform.

Then rows/s with 1,000 flights per request, and onnxruntime's in-process latency at batch 1 and
4096. The model is trained here (small, 2 epochs) unless `--home` already has a champion.

    python benchmarks/serving.py

Writes benchmarks/results/serving.json and prints the rows for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

# ruff: noqa: E402
ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "benchmarks":
    sys.path[0] = str(ROOT)  # `serving` must be the package, not this file

import numpy as np
import pandas as pd
from rich.console import Console
from rich.logging import RichHandler

if TYPE_CHECKING:
    from serving.runtime import LoadedModel

logger = logging.getLogger("benchmarks.serving")
console = Console(highlight=False, soft_wrap=True)
CONCURRENCY = (1, 8, 32, 128)


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """A server process, up when its health URL answers 200."""

    def __init__(self, name: str, command: list[str], health: str, env: dict) -> None:
        self.name = name
        self.log = Path(f"/tmp/mlops-bench/{name}.log")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            command, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT
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
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


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
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[%s]==]
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %%d, "failures": %%d, "requests_per_s": %%.3f, '
    .. '"p50_ms": %%.4f, "p99_ms": %%.4f}\\n',
    summary.requests, e.connect + e.read + e.write + e.status + e.timeout,
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def load(url: str, body: bytes, concurrency: int, seconds: float, client: str = "wrk") -> dict:
    """Drive `url` from a separate process (wrk, one thread; or the aiohttp client)."""
    if client == "wrk":
        script = Path("/tmp/mlops-bench/load.lua")
        script.write_text(WRK_SCRIPT % body.decode())
        duration = f"-d{max(1, round(seconds))}s"
        command = ["wrk", "-t1", f"-c{concurrency}", duration, "--timeout", "10s"]
        command += ["-s", str(script), url]
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


def main(args: argparse.Namespace) -> None:
    home = args.home
    folder, model_uri = prepare(home)
    one, sample = flights_body(home, 1)
    thousand, big_sample = flights_body(home, 1000)
    from serving.bundle import read_bundle
    from serving.runtime import LoadedModel

    model = LoadedModel.load(read_bundle(folder), threads=os.cpu_count() or 1)
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    # `mlflow models serve` starts `uvicorn` from PATH: the one of this environment
    env = os.environ | {"MLOPS_HOME": str(home), "PYTHONPATH": str(ROOT), "PATH": path}
    results: dict = {
        "date": datetime.now(UTC).date().isoformat(),
        "cpus": os.cpu_count(),
        "seconds_per_point": args.seconds,
        "rounds": args.rounds,
        "client": args.client,
        "model": model_uri,
        "onnx": onnx_latency(model, big_sample),
    }
    servers = {
        "ours": (
            [sys.executable, "-m", "mlops", "serve", "--model-dir", str(folder)],
            "/predict",
            one,
            "/v2/health/ready",
        ),
        "floor": (
            [sys.executable, "-m", "uvicorn", "benchmarks.floor_app:app"],
            "/predict",
            one,
            "/health",
        ),
        "mlflow": (
            [
                sys.executable,
                "-m",
                "mlflow",
                "models",
                "serve",
                "-m",
                model_uri,
                "--env-manager",
                "local",
                "--workers",
                "1",
            ],
            "/invocations",
            mlflow_body(model, sample),
            "/health",
        ),
    }
    if args.candidate is not None:  # the same server on another model, the same flight
        servers["candidate"] = (
            [sys.executable, "-m", "mlops", "serve", "--model-dir", str(args.candidate)],
            *servers["ours"][1:],
        )
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{(home / 'mlflow.db').resolve()}"
    running: dict[str, tuple[Process, str, bytes]] = {}
    try:
        for name in args.servers:  # all up at once; an idle server costs nothing
            command, path, body, health = servers[name]
            port = free_port()
            if name in ("ours", "candidate"):
                command = [*command[:3], "--home", str(home), *command[3:]]
                command += ["--port", str(port), "--workers", "1"]
            elif name == "floor":
                command += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
            else:
                command += ["--port", str(port), "--host", "127.0.0.1"]
            server = Process(name, command, f"http://127.0.0.1:{port}{health}", env)
            running[name] = (server, f"http://127.0.0.1:{port}{path}", body)
        for server, _, _ in running.values():
            server.wait()
        rounds: dict[str, dict[str, list[dict]]] = {name: {} for name in running}
        for concurrency in args.concurrency:
            for turn in range(args.rounds):  # the servers back to back, round after round
                for name, (_, url, body) in running.items():
                    figures = load(url, body, concurrency, args.seconds, args.client)
                    rounds[name].setdefault(str(concurrency), []).append(figures)
                    logger.info("%s c=%d round %d: %s", name, concurrency, turn + 1, figures)
        for name in running:
            results[name] = {c: summarize(runs) for c, runs in rounds[name].items()}
        if "ours" in running:
            _, url, _ = running["ours"]
            results["ours"]["rows_1000"] = load(url, thousand, 4, args.seconds, args.client)
            results["ours"]["rows_1000"]["rows_per_s"] = (
                results["ours"]["rows_1000"]["requests_per_s"] * 1000
            )
            logger.info("ours, 1,000 flights per request: %s", results["ours"]["rows_1000"])
        if "ours" in running and "floor" in running:
            results["ours_over_floor"] = {
                c: statistics.median(
                    o["requests_per_s"] / f["requests_per_s"]
                    for o, f in zip(rounds["ours"][c], rounds["floor"][c], strict=True)
                )
                for c in rounds["ours"]
            }
        if "ours" in running and "candidate" in running:
            results["candidate_over_ours"] = {
                c: {
                    key: statistics.median(
                        n[key] / o[key]
                        for n, o in zip(rounds["candidate"][c], rounds["ours"][c], strict=True)
                    )
                    for key in ("requests_per_s", "p99_ms")
                }
                for c in rounds["ours"]
            }
    finally:
        for server, _, _ in running.values():
            server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    logger.info("wrote %s", args.out)
    console.print()
    for line in markdown(results):
        console.print(line, markup=False)


def summarize(runs: list[dict]) -> dict:
    """The median of each figure over the rounds, and every round's throughput."""
    out = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    out["failures"] = sum(run["failures"] for run in runs)
    out["requests_per_s_rounds"] = [run["requests_per_s"] for run in runs]
    return out


def markdown(results: dict) -> list[str]:
    lines = [
        f"{results['date']}, {results['cpus']} cores, {results['rounds']} rounds of "
        f"{results['seconds_per_point']} s per point (the servers back to back in each round; "
        f"medians), one uvicorn worker per server, load from a separate process "
        f"({results.get('client', 'aiohttp')}).",
        "",
        "| server | concurrency | requests/s | each round | p50 ms | p99 ms | failures |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("ours", "candidate", "floor", "mlflow"):
        for concurrency, f in results.get(name, {}).items():
            if concurrency.isdigit():
                each = " / ".join(f"{r:,.0f}" for r in f["requests_per_s_rounds"])
                lines.append(
                    f"| {name} | {concurrency} | {f['requests_per_s']:,.0f} | {each} "
                    f"| {f['p50_ms']:.1f} | {f['p99_ms']:.1f} | {f['failures']} |"
                )
    if "ours" in results and "floor" in results:
        lines += [
            "",
            "| concurrency | ours / floor throughput (median of the rounds' ratios) "
            "| ours / mlflow throughput | ours / mlflow p99 |",
            "|---|---|---|---|",
        ]
        for concurrency in results["ours"]:
            if not concurrency.isdigit():
                continue
            ours = results["ours"][concurrency]
            row = f"| {concurrency} | {results['ours_over_floor'][concurrency]:.2f}x"
            if "mlflow" in results:
                other = results["mlflow"][concurrency]
                row += f" | {ours['requests_per_s'] / other['requests_per_s']:.2f}x"
                row += f" | {ours['p99_ms'] / other['p99_ms']:.2f} |"
            else:
                row += " | | |"
            lines.append(row)
    if "candidate_over_ours" in results:
        lines += ["", "| concurrency | candidate / ours throughput | candidate / ours p99 |"]
        lines.append("|---|---|---|")
        for concurrency, ratio in results["candidate_over_ours"].items():
            lines.append(
                f"| {concurrency} | {ratio['requests_per_s']:.2f}x | {ratio['p99_ms']:.2f}x |"
            )
    if "ours" in results and "rows_1000" in results["ours"]:
        f = results["ours"]["rows_1000"]
        lines += [
            "",
            f"1,000 flights per request (concurrency 4): {f['rows_per_s']:,.0f} rows/s, "
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
    parser.add_argument("--servers", nargs="+", default=["ours", "floor", "mlflow"])
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
