"""Benchmark: from spawn to the first answer on /v2/health/live, with MLflow unreachable.

Each round starts three processes one after another and times each until it answers:
`mlops serve` (the registry at a closed port: the server must be live without it), uvicorn
with the bare FastAPI floor app (`benchmarks/floor_app.py`: the interpreter, FastAPI and
uvicorn, nothing of ours), and `python -c pass` (the interpreter alone). The figure is
`mlops serve`'s time over the floor's, from the same rounds, since the machine is shared.

    PYTHONPATH=. python benchmarks/startup.py --rounds 7

Writes benchmarks/results/startup.json and prints the row for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "benchmarks":
    sys.path[0] = str(ROOT)  # `serving` must be the package, not benchmarks/serving.py

# ruff: noqa: E402
import httpx

from tests.processes import clean_env, free_port


def time_to_answer(command: list[str], path: str, port: int, env: dict[str, str]) -> float:
    """Seconds from spawn to the first answer on `path` (any status), the process then stopped."""
    started = time.monotonic()
    process = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command[:3]} exited with {process.returncode}")
            try:
                httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1)
                return time.monotonic() - started
            except httpx.TransportError:
                time.sleep(0.01)
    finally:
        process.terminate()
        process.wait(30)


def interpreter_s() -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    samples: dict[str, list[float]] = {"mlops serve": [], "floor": [], "interpreter": []}
    with tempfile.TemporaryDirectory() as home:
        env = clean_env(MLOPS_HOME=home, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}")
        env["PYTHONPATH"] = str(ROOT)
        for _ in range(args.rounds):
            port = free_port()
            serve = [sys.executable, "-m", "mlops", "serve", "--port", str(port)]
            samples["mlops serve"].append(time_to_answer(serve, "/v2/health/live", port, env))
            port = free_port()
            floor = [
                sys.executable,
                "-m",
                "uvicorn",
                "benchmarks.floor_app:app",
                "--port",
                str(port),
            ]
            samples["floor"].append(time_to_answer(floor, "/health", port, env))
            samples["interpreter"].append(interpreter_s())
    medians = {name: statistics.median(values) for name, values in samples.items()}
    result = {
        "rounds": args.rounds,
        "median_s": {name: round(value, 3) for name, value in medians.items()},
        "max_s": {name: round(max(values), 3) for name, values in samples.items()},
        "serve_over_floor": round(medians["mlops serve"] / medians["floor"], 2),
    }
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "startup.json").write_text(json.dumps(result, indent=2))
    m, x = result["median_s"], result["max_s"]
    print(
        f"| {args.rounds} | {m['mlops serve']} / {x['mlops serve']} | {m['floor']} / {x['floor']} "
        f"| {m['interpreter']} | {result['serve_over_floor']}x |"
    )


if __name__ == "__main__":
    main()
