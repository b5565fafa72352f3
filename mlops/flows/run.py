"""`mlops run`: the whole chain on embedded defaults."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mlops.configs import for_framework
from mlops.flows.data import build_features, ingest
from mlops.flows.progress import Progress
from mlops.flows.training import best_of_study, promote, train, tune, with_best_trees
from mlops.locks import writer_lock
from mlops.settings import Settings
from pipelines.ingest import MonthWindow
from pipelines.splits import latest_plan
from training.config import NETWORKS, Framework, TuneConfig

if TYPE_CHECKING:
    from pipelines.features import FeatureReport
    from pipelines.ingest import IngestReport
    from training.registry import Decision
    from training.train import TrainResult
    from training.tune import TuneResult


@dataclass(frozen=True)
class Challenger:
    trained: TrainResult
    decision: Decision


@dataclass(frozen=True)
class RunReport:
    ingest: IngestReport
    features: FeatureReport
    studies: list[TuneResult]  # one per framework, in the order of the challengers
    challengers: list[Challenger]  # in the order they were gated

    @property
    def last_champion(self) -> Challenger | None:
        promoted = [c for c in self.challengers if c.decision.promoted]
        return promoted[-1] if promoted else None


def run(
    settings: Settings,
    progress: Progress,
    tune_config: TuneConfig,
    epochs: int | None = None,
    until: str | None = None,
    frameworks: Sequence[Framework] = ("torch",),
) -> RunReport:
    """Data, then a challenger per framework (its study, and its best configuration trained),
    each exported, registered and gated in turn, so the best of them and the champion ends
    with the alias; all of it under the data lock, so no retrain changes the table between
    the first study and the last gate. `tune_config` is the network's study; another
    framework's is the same budget in a study of its own (`mlops.configs.tune_of`)."""
    with writer_lock(settings, "mlops run", on_wait=progress.note) as lock:
        ingested = ingest(settings, progress, {}, MonthWindow(until=until))
        features = build_features(settings, progress, latest_plan(until) if until else None)
        studies, challengers = [], []
        for framework in frameworks:
            tuned = tune(settings, progress, for_framework(tune_config, framework))
            studies.append(tuned)
            if framework in NETWORKS:
                model_config, fit_config = best_of_study(settings, tuned, epochs)
                trained = train(settings, progress, model_config, fit_config, framework=framework)
            else:
                best = with_best_trees(settings, framework, tuned.best_params)
                trained = train(best, progress, framework=framework)
            if trained is None:
                raise RuntimeError(
                    "`mlops run` trains in one process; start DDP with `mlops train`"
                )
            lock.check()  # a lost lock: another writer may have changed the data since
            challengers.append(Challenger(trained, promote(settings, trained.run_id)))
    return RunReport(ingested, features, studies, challengers)
