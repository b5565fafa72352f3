"""The promotion gate: compare-and-set on the alias, its decision tagged, nothing left in /tmp."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipelines.storage import read_parquet_folder
from tests.processes import MlflowServer
from training.config import GateConfig, TrackingConfig
from training.fit import FitConfig
from training.model import ModelConfig
from training.registry import holdout_metrics, promote
from training.train import train

from .conftest import write_feature_table

pytestmark = pytest.mark.slow  # three models trained and exported: about a minute


@dataclass(frozen=True)
class Ranked:
    """Three logged models of the same table, worst to best on its holdout."""

    tracking: TrackingConfig
    holdout: pd.DataFrame
    worst: str
    middle: str
    best: str


@pytest.fixture(scope="module")
def ranked(tmp_path_factory: pytest.TempPathFactory) -> Ranked:
    home = tmp_path_factory.mktemp("ranked")
    layout = write_feature_table(home, rows=8_000)
    tracking = TrackingConfig(home, experiment="ranked")
    model = ModelConfig(width=16, depth=1, numeric_dim=2)
    # from barely trained to trained: a learning rate apart
    runs = [
        train(layout, tracking, model, FitConfig(epochs=1, batch_size=4096, learning_rate=lr))
        for lr in (1e-6, 3e-4, 1e-2)
    ]
    holdout = read_parquet_folder(layout.split("test"))
    client = tracking.client()
    scored = sorted((holdout_metrics(client, r.run_id, holdout)[0], r.run_id) for r in runs)
    assert scored[0][0] < scored[1][0] < scored[2][0], scored
    return Ranked(tracking, holdout, *(run_id for _, run_id in scored))


class RacingClient(MlflowClient):
    """A real client after whose first read of the champion `race` runs: another promotion
    lands while this gate is scoring the champion it read."""

    def __init__(self, uri: str, race: Callable[[], None]) -> None:
        super().__init__(tracking_uri=uri, registry_uri=uri)
        self.race: Callable[[], None] | None = race

    def get_model_version_by_alias(self, name: str, alias: str):
        found = super().get_model_version_by_alias(name, alias)
        if self.race is not None:
            race, self.race = self.race, None
            race()
        return found


def _champion(client: MlflowClient, gate: GateConfig) -> str:
    return client.get_model_version_by_alias(gate.model_name, gate.alias).run_id


def test_a_concurrent_better_promotion_is_not_overwritten(ranked: Ranked) -> None:
    gate = GateConfig(model_name="race-better")
    client = ranked.tracking.client()
    promote(client, ranked.worst, ranked.holdout, gate)

    def rival() -> None:  # the better model's promotion, in the middle of ours
        assert promote(client, ranked.best, ranked.holdout, gate).promoted

    uri = ranked.tracking.resolved_uri
    decision = promote(RacingClient(uri, rival), ranked.middle, ranked.holdout, gate)
    assert not decision.promoted
    assert _champion(client, gate) == ranked.best
    best_version = client.get_model_version_by_alias(gate.model_name, gate.alias).version
    assert decision.champion_version == str(best_version)  # judged against the new champion
    version = client.get_model_version(gate.model_name, decision.version)
    assert version.tags["gate_decision"] == "rejected"
    run = client.get_run(ranked.middle)
    assert run.data.tags["gate_decision"] == "rejected"
    assert run.data.tags["gate_champion_version"] == str(best_version)


def test_a_challenger_beats_the_champion_that_replaced_the_one_it_read(ranked: Ranked) -> None:
    gate = GateConfig(model_name="race-worse")
    client = ranked.tracking.client()
    first = promote(client, ranked.worst, ranked.holdout, gate)

    def rival() -> None:  # the middle model takes over while the best one is judged
        assert promote(client, ranked.middle, ranked.holdout, gate).promoted

    uri = ranked.tracking.resolved_uri
    decision = promote(RacingClient(uri, rival), ranked.best, ranked.holdout, gate)
    assert decision.promoted and decision.champion_version != first.version
    assert _champion(client, gate) == ranked.best
    version = client.get_model_version(gate.model_name, decision.version)
    assert version.tags["gate_decision"] == "promoted"


def test_a_gate_leaves_no_temporary_files(
    ranked: Ranked, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = GateConfig(model_name="no-leftovers")
    client = ranked.tracking.client()
    promote(client, ranked.worst, ranked.holdout, gate)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where every mkdtemp goes
    monkeypatch.setenv("TMPDIR", str(scratch))
    decision = promote(client, ranked.middle, ranked.holdout, gate)
    assert decision.champion_version is not None  # both models were downloaded and scored
    assert list(scratch.iterdir()) == []


class CutClient(MlflowClient):
    """A real client that takes MLflow's database down (for `down_s`, then up again) at one
    moment of a promotion: its first read of the champion, or right before or right after it
    moves the alias. The moments a restart must not split the alias from its tag."""

    def __init__(self, uri: str, cluster, moment: str, down_s: float = 3) -> None:
        super().__init__(tracking_uri=uri, registry_uri=uri)
        self.cluster, self.moment, self.down_s = cluster, moment, down_s
        self.restarted: threading.Thread | None = None

    def _cut(self, moment: str) -> None:
        if moment == self.moment and self.restarted is None:
            self.cluster.stop(mode="immediate")
            self.restarted = threading.Timer(self.down_s, self.cluster.start)
            self.restarted.start()

    def get_model_version_by_alias(self, name: str, alias: str):
        self._cut("scoring")
        return super().get_model_version_by_alias(name, alias)

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        self._cut("before the move")
        super().set_registered_model_alias(name, alias, version)
        self._cut("after the move")


@pytest.mark.timeout(900)
def test_a_database_restart_during_promote_moves_the_alias_iff_the_decision_is_tagged(
    restartable_postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow on PostgreSQL, its database restarted at each moment of a promotion in turn."""
    backend = restartable_postgres.create_database("mlflow")
    server = MlflowServer(tmp_path / "mlflow", backend.replace("postgresql", "postgresql+psycopg"))
    server.start()
    try:
        layout = write_feature_table(tmp_path / "home", rows=8_000)
        tracking = TrackingConfig(tmp_path / "home", uri=server.uri)
        small = ModelConfig(width=16, depth=1, numeric_dim=2)
        run_id = train(layout, tracking, small, FitConfig(epochs=1, batch_size=4096)).run_id
        holdout = read_parquet_folder(layout.split("test"))
        gate = GateConfig(min_auc_gain=-1.0)  # each promotion moves the alias: the hard case
        promote(tracking.client(), run_id, holdout, gate)
        for moment in ("scoring", "before the move", "after the move"):
            # no retries: a request in the outage fails, as it would after MLflow's retries in
            # a longer one, so the promotion fails part-way (the case to be consistent in)
            monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            cut = CutClient(server.uri, restartable_postgres, moment)
            with pytest.raises(MlflowException):
                promote(cut, run_id, holdout, gate)
            assert cut.restarted is not None
            cut.restarted.join()
            monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
            client = tracking.client()
            versions = client.search_model_versions(f"name = '{gate.model_name}'")
            version = str(max(int(v.version) for v in versions))
            tags = client.get_model_version(gate.model_name, version).tags
            champion = client.get_model_version_by_alias(gate.model_name, gate.alias)
            moved = str(champion.version) == version
            assert moved == (tags.get("gate_decision") == "promoted"), (moment, tags)
            assert moved == (moment == "after the move"), moment
    finally:
        server.stop()
