"""The stack's Prometheus rules as code: `promtool test rules` (every alert fires on a series
that should fire it and stays silent on one that should not), the configurations checked, and
every metric a rule reads exported under that name by the server, the sink or the scheduler."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from mlops.flows.sink import SinkMetrics
from pipelines.sink import SinkState
from pipelines.transform import NUMERICAL
from serving.metrics import ServingMetrics
from serving.quality import RealizedQuality

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "infra" / "prometheus"
RULES = sorted((PROMETHEUS / "rules").glob("*.yml"))


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"needs {name} (Debian: apt-get install prometheus prometheus-alertmanager)")
    return found


def run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, cwd=PROMETHEUS, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_every_alert_fires_when_it_should_and_only_then() -> None:
    tests = sorted((PROMETHEUS / "tests").glob("*_test.yml"))
    output = run(tool("promtool"), "test", "rules", *map(str, tests))
    assert output.count("SUCCESS") == len(tests)
    tested = {
        alert["alertname"]
        for path in tests
        for case in yaml.safe_load(path.read_text())["tests"]
        for alert in case.get("alert_rule_test", [])
        if alert.get("exp_alerts")  # seen firing
    }
    alerts = {
        rule["alert"]
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert alerts and alerts <= tested, f"never seen firing: {sorted(alerts - tested)}"


def test_the_configurations_are_valid() -> None:
    run(tool("promtool"), "check", "rules", *map(str, RULES))
    run(tool("promtool"), "check", "config", "--syntax-only", "prometheus.yml")
    run(tool("amtool"), "check-config", str(ROOT / "infra" / "alertmanager" / "alertmanager.yml"))


def exported() -> set[str]:
    """The sample names the API's, the sink's and the scheduler's registries export."""
    metrics = ServingMetrics()
    metrics.watch_quality(RealizedQuality())
    caught_up = SimpleNamespace(lag_s=lambda position: 0.0)
    sink = SinkMetrics(SimpleNamespace(state=SinkState()), caught_up)  # type: ignore[arg-type]
    names = set()
    for family in [*metrics.registry.collect(), *sink.registry.collect()]:
        kinds = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        names |= {family.name + suffix for suffix in kinds.get(family.type, [""])}
    text = (ROOT / "mlops" / "scheduler.py").read_text()
    names |= {f"{name}_total" for name in re.findall(r'Counter\(\s*"(\w+)"', text)}
    names |= set(re.findall(r'Gauge\(\s*"(\w+)"', text))
    return names


def test_every_metric_a_rule_reads_is_exported() -> None:
    read = set()
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                read |= set(re.findall(r"\b(mlops_[a-z_]+)", rule["expr"]))
    assert read, "no rule reads a metric of ours"
    missing = read - exported()
    assert not missing, f"rules read metrics nothing exports: {sorted(missing)}"


def test_the_input_drift_alert_names_inputs_the_spec_has() -> None:
    """The input alert sorts the inputs by name patterns: a renamed feature must not fall
    silently out of its class (a season's feature alerting, or a delay's at 0.25)."""
    (rule,) = [
        rule
        for group in yaml.safe_load((PROMETHEUS / "rules" / "model.yml").read_text())["groups"]
        for rule in group["rules"]
        if rule.get("alert") == "MLOpsInputDrift"
    ]
    excluded, delays = (
        re.search(rf'feature{op}"([^"]+)"', rule["expr"]).group(1) for op in ("!~", "=~")
    )
    for term in excluded.split("|"):
        assert any(re.fullmatch(term, name) for name in NUMERICAL), f"no input matches {term}"
    matched = [name for name in NUMERICAL if re.fullmatch(delays, name)]
    assert len(matched) >= 6, f"the delays' pattern matches only {matched}"
    assert all(re.fullmatch(excluded, name) for name in matched), "a delay alerts at 0.25"
    structural = [name for name in NUMERICAL if not re.fullmatch(excluded, name)]
    assert {"distance", "origin_scheduled_count_hour", "tail_prev_hours_since"} <= set(structural)
