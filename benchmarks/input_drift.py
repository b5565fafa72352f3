"""Measurement: how far each input drifts, against the training months, in months where the
model is fine; what the thresholds of the input alert (infra/prometheus/rules/model.yml) rest on.

    PYTHONPATH=. python benchmarks/input_drift.py --home HOME [--splits valid test]

HOME: an MLOPS_HOME with a feature table (`mlops data ingest && mlops data features`). Each
split's rows, in order of scheduled departure, are cut into windows of the server's size
(`DriftMonitor`'s 10,000 rows, every 5,000 rows), and each numerical input's PSI is computed
as the server computes it (`serving.drift.psi_against`, the defaults left out) against the
spec's training bins; prints each input's largest PSI over the windows, by the alert's class
of input, and writes benchmarks/results/input_drift.json. The served features equal the
offline table's (tests/serving/test_replay.py), so a replay's /metrics see these figures.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "benchmarks":
    sys.path[0] = str(ROOT)  # `serving` must be the package, not benchmarks/serving.py

# ruff: noqa: E402
import numpy as np
import yaml

from pipelines.layout import DataLayout
from pipelines.spec import FeatureSpec, encode
from pipelines.storage import read_parquet_folder
from serving.drift import psi_against

WINDOW, STRIDE = 10_000, 5_000


def classes() -> tuple[str, str]:
    """The alert's patterns: the inputs it leaves out at 0.25, and the delays' (alert past 1)."""
    for group in yaml.safe_load((ROOT / "infra/prometheus/rules/model.yml").read_text())["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "MLOpsInputDrift":
                excluded, delays = (
                    re.search(rf'feature{op}"([^"]+)"', rule["expr"]).group(1)
                    for op in ("!~", "=~")
                )
                return excluded, delays
    raise SystemExit("no MLOpsInputDrift rule")


def largest_psi(layout: DataLayout, spec: FeatureSpec, split: str) -> tuple[int, dict[str, float]]:
    table = read_parquet_folder(layout.split(split)).sort_values(
        "scheduled_departure", kind="stable"
    )
    encoded = encode(table, spec)
    worst: dict[str, float] = {}
    for start in range(0, max(len(table) - WINDOW, 0) + 1, STRIDE):
        values = encoded.numerical[start : start + WINDOW]
        missing = encoded.defaults_used[start : start + WINDOW]
        for j, feature in enumerate(spec.numerical):
            present = values[~missing[:, j], j]
            if len(present):
                edges = np.asarray(feature.psi_edges)
                expected = np.asarray(feature.psi_fractions)
                value = psi_against(edges, expected, present)
                worst[feature.name] = max(worst.get(feature.name, 0.0), value)
    return len(table), worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--splits", nargs="+", default=["valid", "test"])
    args = parser.parse_args()
    layout = DataLayout(args.home)
    spec = FeatureSpec.load(layout.spec)
    excluded, delays = classes()
    results = {}
    for split in args.splits:
        rows, worst = largest_psi(layout, spec, split)
        results[split] = {"rows": rows, "largest_psi": worst}
        print(f"{split}: {rows} rows, the largest PSI of a {WINDOW}-row window")
        season = [n for n in worst if re.fullmatch(excluded, n) and not re.fullmatch(delays, n)]
        late = [n for n in worst if re.fullmatch(delays, n)]
        rest = [n for n in worst if not re.fullmatch(excluded, n)]
        for kind, names in (
            ("season (never alerts)", season),
            ("delays (alert past 1)", late),
            ("the rest (alert past 0.25)", rest),
        ):
            top = ", ".join(f"{n} {worst[n]:.3f}" for n in sorted(names, key=lambda n: -worst[n]))
            print(f"  {kind}: {top}")
    out = ROOT / "benchmarks" / "results" / "input_drift.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
