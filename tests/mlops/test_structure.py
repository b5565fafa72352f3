"""The shape of `mlops/`: no import cycle, and one source for the defaults a run trains with."""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from mlflow import MlflowClient

import mlops
from mlops.settings import Settings
from serving.config import ServeConfig
from tests.processes import clean_env
from tests.training.conftest import write_feature_table
from training.config import (
    FitConfig,
    GateConfig,
    LightGBMConfig,
    ModelConfig,
    TrackingConfig,
    TuneConfig,
)

PACKAGE = Path(mlops.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every `mlops.*` import of every module, function-level imports included."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets |= {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path, node, target]
            if target not in state and (cycle := visit(target, [*path, node])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [])):
            return cycle
    return None


def test_mlops_has_no_import_cycle() -> None:
    graph = import_graph()
    assert graph.get("mlops.cli")  # the walk sees the package
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_flows_print_nothing_and_import_no_command() -> None:
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("mlops.flows"):
            assert not {t for t in targets if t.startswith(("mlops.commands", "mlops.cli"))}
            assert "mlops.console" not in targets, f"{name} renders: only commands do"


def test_a_cli_run_trains_with_the_library_defaults(tmp_path: Path) -> None:
    """`mlops train` as a user runs it, nothing set: the architecture and the fit its run logs
    are the library's documented defaults (the epochs, given on the command line, aside)."""
    write_feature_table(tmp_path, rows=4_000)
    done = subprocess.run(
        [sys.executable, "-m", "mlops", "--home", str(tmp_path), "train", "--epochs", "1"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    client = MlflowClient(TrackingConfig(tmp_path).resolved_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("flight-delay").experiment_id])
    expected = {f"model.{k}": str(v) for k, v in ModelConfig().as_params().items()}
    expected |= {f"fit.{k}": str(v) for k, v in replace(FitConfig(), epochs=1).as_params().items()}
    logged = {k: v for k, v in run.data.params.items() if k.startswith(("model.", "fit."))}
    assert logged == expected


def test_the_settings_sections_are_the_library_configs() -> None:
    settings = Settings(_env_file=None)
    for section, config in (
        (settings.model, ModelConfig()),
        (settings.fit, FitConfig()),
        (settings.lightgbm, LightGBMConfig()),
        (settings.tune, TuneConfig()),
        (settings.gate, GateConfig()),
        (settings.serve, ServeConfig()),
    ):
        assert type(section) is type(config)
