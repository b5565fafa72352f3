"""Benchmark: what a refused request costs `mlops serve` against a served one, and the goodput
at an overload that this bounds whatever the admission rule.

Two servers on one model, one worker each: `mlops serve` as shipped, and the same with every
scoring request refused (its batcher's `refusal` answering "queue_full" always, so each
request takes the path of an overload's excess: the protocol's 503 at the edge). wrk drives
both at concurrency 32 with one flight per request, alternated in rounds. The ratio
r = served/s / refused/s is a refusal's cost in served requests. At an offered load of k times
the capacity C, serving a admitted requests and refusing the rest fits in the server's time
only if a + (kC - a) r <= C, so goodput a/C is at most (1 - k r) / (1 - r), with a perfect
admission rule, and lower where the load generator shares the machine's cores (`--pin`
gives the servers the first CPU and wrk the others).

    PYTHONPATH=. python benchmarks/refusal_cost.py --model-dir MODEL [--pin]

MODEL: a model folder (`mlops export`, or the one `benchmarks/serving.py` downloads into its
home). Needs wrk. Prints the rows for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "benchmarks":
    sys.path[0] = str(ROOT)  # `serving` must be the package, not benchmarks/serving.py

# ruff: noqa: E402
import httpx

from benchmarks.cores import pin_client, pin_server
from benchmarks.peers.harness import free_port
from benchmarks.serving import load
from serving.schemas import EXAMPLE_FLIGHT
from tests.processes import serving_process

# `python -m mlops` with every scoring request refused (run as `python -c`)
REFUSING = (
    "from serving.batcher import MicroBatcher; "
    "MicroBatcher.refusal = lambda self: 'queue_full'; "
    "from mlops.cli import app; app(prog_name='mlops')"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="per server and round")
    parser.add_argument("--factor", type=float, default=2.0, help="the overload, x capacity")
    parser.add_argument("--pin", action="store_true", help="servers on CPU 0, wrk on the rest")
    args = parser.parse_args()
    body = httpx.Request("POST", "/", json={"flights": [EXAMPLE_FLIGHT]}).read()
    env = os.environ | {"MLOPS_SERVE__POLL_INTERVAL_S": "0", "PYTHONPATH": str(ROOT)}
    rates: dict[str, list[float]] = {"served": [], "refused": []}
    with tempfile.TemporaryDirectory() as home:
        serve = ["--home", home, "serve", "--model-dir", str(args.model_dir), "--port"]
        ports = {"served": free_port(), "refused": free_port()}
        commands = {
            "served": [sys.executable, "-m", "mlops", *serve, str(ports["served"])],
            "refused": [sys.executable, "-c", REFUSING, *serve, str(ports["refused"])],
        }
        with (
            serving_process(commands["served"], ports["served"], env=env) as served,
            serving_process(commands["refused"], ports["refused"], env=env) as refusing,
        ):
            if args.pin:  # loaded one at a time, so both on the one core
                pin_server(served.process.pid)
                pin_server(refusing.process.pid)
                pin_client()
            for _ in range(args.rounds):
                for kind, port in ports.items():
                    url = f"http://127.0.0.1:{port}/predict"
                    figures = load(url, body, 32, args.seconds)
                    # wrk's failures include every non-2xx: none served, all refused
                    wanted = 0 if kind == "served" else figures["requests"]
                    assert figures["failures"] == wanted, (kind, figures)
                    rates[kind].append(figures["requests_per_s"])
    served, refused = (statistics.median(rates[k]) for k in ("served", "refused"))
    r = served / refused
    bound = (1 - args.factor * r) / (1 - r)
    print("| round | served/s | refused/s | r |")
    print("|---|---|---|---|")
    for i, (s, f) in enumerate(zip(rates["served"], rates["refused"], strict=True), 1):
        print(f"| {i} | {s:,.0f} | {f:,.0f} | {s / f:.3f} |")
    print(
        f"\nMedians: {served:,.0f} served/s, {refused:,.0f} refused/s, r = {r:.3f}: at "
        f"{args.factor:g}x the capacity the goodput is at most {bound:.2f}x the capacity."
    )


if __name__ == "__main__":
    main()
