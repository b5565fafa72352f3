"""Hyperparameter search: an Optuna study whose trials are nested MLflow runs.

A study searches one framework's space. TPE proposes a configuration; a trial of the network
trains it for at most `epochs` epochs and reports the validation loss after every epoch, a
trial of the trees boosts until early stopping and reports every ROUNDS_PER_REPORT rounds, so
Hyperband (or successive halving) stops the poor ones early. The study lives in an Optuna
storage: SQLite under MLOPS_HOME by default, or a shared database
(`MLOPS_OPTUNA_STORAGE=postgresql://...`) so that several processes, on one machine or many,
work on one study. Heartbeats mark the trial of a killed worker as failed and
`RetryHeartbeatStaleTrialCallback` queues it again, and a worker rides out a database restart
(training/study.py), so the study still finishes its budget.

MLflow: one parent run per study, made by whichever process first finds it missing and recorded
in the study's user attributes (training/study.py); one nested run per trial, whose id goes
into the trial's user attributes. Optuna's own plots go to the parent run.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import socket
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import mlflow
import optuna
from mlflow import MlflowClient
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from pipelines.layout import DataLayout
from pipelines.metrics import roc_auc
from pipelines.spec import FeatureSpec, part_of
from training import plots
from training.config import (
    TREES,
    CatBoostConfig,
    FitConfig,
    ModelConfig,
    TrackingConfig,
    TreesConfig,
    TuneConfig,
    ValidationConfig,
    trees_config,
)
from training.fit import EpochResult, fit, fresh_model, predict_logits
from training.metrics import sigmoid
from training.study import (
    is_outage,
    open_storage,
    parent_run,
    recover_trial,
    wait_for_storage,
)
from training.tensors import pick_device, to_tensors
from training.tracking import experiment_id, fluent_tracking
from training.train import DEFAULT_VALIDATION, load_splits, ported, sampled

logger = logging.getLogger(__name__)

RUN_ATTR = "mlflow_run_id"
FRAMEWORK_ATTR = "framework"  # the study's: whose search space its trials sample
VALIDATION_ATTR = "validation"  # the study's: which rows its trials' losses are measured on
SAMPLE_ATTR = "sample"  # the study's: the share of the training rows its trials train on
ROUNDS_PER_REPORT = 10  # a trees trial reports its validation loss this often
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

OnProgress = Callable[[int], None]  # called with the number of finished trials


@dataclass(frozen=True)
class TuneResult:
    study: str
    parent_run_id: str
    best_params: dict[str, object]
    best_valid_loss: float
    counts: dict[str, int]


def suggest(trial: optuna.Trial, fit_config: FitConfig) -> tuple[ModelConfig, FitConfig]:
    """The search space. A `FixedTrial` of the best parameters rebuilds the best configs."""
    embedding = trial.suggest_categorical("numeric_embedding", ["none", "ple", "periodic"])
    model = ModelConfig(
        numeric_embedding=embedding,
        numeric_dim=trial.suggest_categorical("numeric_dim", [4, 8, 16]),
        categorical_dim=trial.suggest_int("categorical_dim", 4, 16, step=4),
        backbone=trial.suggest_categorical("backbone", ["mlp", "resnet"]),
        width=trial.suggest_categorical("width", [64, 128, 256]),
        depth=trial.suggest_int("depth", 1, 3),
        dropout=trial.suggest_float("dropout", 0.0, 0.3),
        members=trial.suggest_categorical("members", [1, 4, 8]),
    )
    if embedding == "periodic":
        model = replace(
            model, periodic_sigma=trial.suggest_float("periodic_sigma", 0.01, 1.0, log=True)
        )
    fit_config = replace(
        fit_config,
        learning_rate=trial.suggest_float("learning_rate", 3e-4, 1e-2, log=True),
        weight_decay=trial.suggest_float("weight_decay", 1e-6, 1e-3, log=True),
        batch_size=trial.suggest_categorical("batch_size", [1024, 2048, 4096]),
    )
    return model, fit_config


# Searched since a study's first trials may have been run: what those trials trained with
LATER_PARAMS = {"members": 1}


# the names `suggest` and `suggest_trees` search, as their configs spell them
NETWORK_SEARCHED = (
    "numeric_embedding",
    "numeric_dim",
    "categorical_dim",
    "backbone",
    "width",
    "depth",
    "dropout",
    "members",
)
FIT_SEARCHED = ("learning_rate", "weight_decay", "batch_size")
TREES_SEARCHED = {
    "lightgbm": (
        "learning_rate",
        "num_leaves",
        "min_child_samples",
        "feature_fraction",
        "bagging_fraction",
        "lambda_l2",
        "cat_smooth",
    ),
    "catboost": (
        "learning_rate",
        "depth",
        "l2_leaf_reg",
        "random_strength",
        "bagging_temperature",
    ),
}


def defaults_as_params(framework: str, fit_config: FitConfig) -> dict[str, object]:
    """The default configuration as a trial's parameters: a new study's first trial, so that
    a small study (`mlops run`'s six) never ends on something worse, on validation, than the
    defaults it started from."""
    if framework in TREES:
        trees = asdict(trees_config(framework))
        params = {name: trees[name] for name in TREES_SEARCHED[framework]}
        if framework == "lightgbm":  # its default is 0, below the logarithmic space
            params["lambda_l2"] = max(trees["lambda_l2"], 1e-3)
        return params
    model, fit = asdict(ModelConfig()), asdict(fit_config)
    params = {name: model[name] for name in NETWORK_SEARCHED} | {
        name: fit[name] for name in FIT_SEARCHED
    }
    if model["numeric_embedding"] == "periodic":
        params["periodic_sigma"] = model["periodic_sigma"]
    return params


def best_configs(params: dict[str, object], fit_config: FitConfig) -> tuple[ModelConfig, FitConfig]:
    """The configs of a study's best trial, for the final training run."""
    return suggest(optuna.trial.FixedTrial(LATER_PARAMS | params), fit_config)


def suggest_trees(trial: optuna.Trial, base: TreesConfig) -> TreesConfig:
    """The trees' search space, the usual one for each library: the number of rounds is left
    to early stopping, the rest searched on log scales where it spans orders of magnitude."""
    if isinstance(base, CatBoostConfig):
        return replace(
            base,
            learning_rate=trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
            depth=trial.suggest_int("depth", 4, 10),
            l2_leaf_reg=trial.suggest_float("l2_leaf_reg", 0.1, 30.0, log=True),
            random_strength=trial.suggest_float("random_strength", 0.01, 10.0, log=True),
            bagging_temperature=trial.suggest_float("bagging_temperature", 0.0, 1.0),
        )
    return replace(
        base,
        learning_rate=trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
        num_leaves=trial.suggest_int("num_leaves", 8, 256, log=True),
        min_child_samples=trial.suggest_int("min_child_samples", 5, 200, log=True),
        feature_fraction=trial.suggest_float("feature_fraction", 0.4, 1.0),
        bagging_fraction=trial.suggest_float("bagging_fraction", 0.4, 1.0),
        lambda_l2=trial.suggest_float("lambda_l2", 1e-3, 10.0, log=True),
        cat_smooth=trial.suggest_float("cat_smooth", 1.0, 100.0, log=True),
    )


def best_trees(params: dict[str, object], base: TreesConfig) -> TreesConfig:
    """The trees' config of a study's best trial."""
    return suggest_trees(optuna.trial.FixedTrial(params), base)


def _pruner(config: TuneConfig) -> optuna.pruners.BasePruner:
    if config.pruner == "hyperband" and config.framework in TREES:
        # the resource is boosting rounds, reported every ROUNDS_PER_REPORT: the most rounds a
        # trial takes is early stopping's to decide, so Optuna estimates it from the first trials
        return optuna.pruners.HyperbandPruner(min_resource=ROUNDS_PER_REPORT, max_resource="auto")
    if config.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=config.epochs)
    if config.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1)
    return optuna.pruners.NopPruner()


def _study(
    storage: RDBStorage, config: TuneConfig, seed: int, validation: ValidationConfig
) -> optuna.Study:
    """Create the study, or load it when another process (or an earlier run) already did; a
    study searches one framework's space on one validation split (`validation`, resolved for
    that framework), recorded when it is made (its trials' losses are comparable only on the
    same rows)."""
    sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    recorded = {
        FRAMEWORK_ATTR: config.framework,
        VALIDATION_ATTR: validation.as_params(),
        SAMPLE_ATTR: config.train_share,
    }
    try:
        study = optuna.create_study(
            storage=storage, study_name=config.study, sampler=sampler, pruner=_pruner(config)
        )
        for key, value in recorded.items():
            study.set_user_attr(key, value)
        study.enqueue_trial(defaults_as_params(config.framework, FitConfig()))
        return study
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(
            study_name=config.study, storage=storage, sampler=sampler, pruner=_pruner(config)
        )
    for key, value in recorded.items():
        searched = study.user_attrs.get(key)
        if searched is None:  # made by a process that has not recorded it yet, or before it was
            study.set_user_attr(key, value)
        elif searched != value:
            raise ValueError(
                f"study {config.study!r} searches with {key} {searched}, not {value}: "
                "name another study (--study)"
            )
    return study


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


class NetworkTrials:
    """The network's trials, in PyTorch or in JAX: a configuration from `suggest`, fit on data
    encoded once (tensors on the training device, or arrays JAX puts on its own)."""

    def __init__(
        self,
        spec: FeatureSpec,
        tables: dict,
        fit_config: FitConfig,
        epochs: int,
        framework: str = "torch",
    ) -> None:
        self.spec, self.fit_config = spec, replace(fit_config, epochs=epochs)
        self.framework = framework
        splits = ("train", "valid")
        if framework != "torch":  # JAX and TensorFlow put arrays on their own devices
            self.parts = {split: part_of(tables[split], spec) for split in splits}
        else:
            device = pick_device()
            self.train, self.valid = (to_tensors(tables[s], spec, device) for s in splits)

    def __call__(self, trial: optuna.Trial, report: Report) -> tuple[float, float]:
        model_config, fit_config = suggest(trial, self.fit_config)
        mlflow.log_params(
            {f"model.{k}": v for k, v in model_config.as_params().items()}
            | {f"fit.{k}": v for k, v in fit_config.as_params().items()}
        )

        def on_epoch(epoch: EpochResult) -> None:
            report(epoch.epoch, epoch.epoch + 1, epoch.train_loss, epoch.valid_loss)

        if self.framework != "torch":
            fit_ported, _ = ported(self.framework)
            train, valid = self.parts["train"], self.parts["valid"]
            network, fitted = fit_ported(
                self.spec, model_config, train, valid, fit_config, on_epoch
            )
            return fitted.best_valid_loss, roc_auc(valid[2], network.predict(valid[0], valid[1]))
        model = fresh_model(self.spec, model_config, fit_config.seed, self.train.label.device)
        result = fit(model, self.train, self.valid, fit_config, on_epoch=on_epoch)
        probabilities = sigmoid(predict_logits(model, self.valid).cpu().numpy())
        return result.best_valid_loss, roc_auc(self.valid.label.cpu().numpy(), probabilities)


class TreesTrials:
    """The trees' trials: a configuration from `suggest_trees`, boosted on arrays encoded
    once, reporting every ROUNDS_PER_REPORT rounds."""

    def __init__(self, spec: FeatureSpec, tables: dict, base: TreesConfig) -> None:
        self.spec, self.base = spec, base
        self.parts = {split: part_of(tables[split], spec) for split in ("train", "valid")}

    def __call__(self, trial: optuna.Trial, report: Report) -> tuple[float, float]:
        from training.gbdt import fit_trees

        config = suggest_trees(trial, self.base)
        mlflow.log_params({f"{config.framework}.{k}": v for k, v in config.as_params().items()})

        def on_round(round_: int, valid_loss: float) -> None:
            if (round_ + 1) % ROUNDS_PER_REPORT == 0:
                report(round_, round_ + 1, None, valid_loss)

        boosted = fit_trees(self.spec, self.parts["train"], self.parts["valid"], config, on_round)
        codes, values, labels = self.parts["valid"]
        probabilities = boosted.model.predict(codes, values)
        return boosted.valid_loss[boosted.best_round], roc_auc(labels, probabilities)


# A trial's progress: the step (epoch or round, from 0), the resource spent (epochs or rounds
# done), the training loss when the framework has one at hand, and the validation loss.
Report = Callable[[int, int, float | None, float], None]
Trials = Callable[[optuna.Trial, Report], tuple[float, float]]  # -> best valid loss, valid AUC


class Objective:
    """One trial: its nested MLflow run around a framework's trials, pruned on what it reports."""

    def __init__(
        self,
        trials: Trials,
        client: MlflowClient,
        experiment_id: str,
        parent: str,
        params: dict[str, object] | None = None,
    ) -> None:
        """Trials log through MLflow's fluent API: call it inside `fluent_tracking`. `params`:
        what every trial of this worker shares, logged on each trial's run."""
        self.trials, self.params = trials, params or {}
        self.client = client
        self.experiment_id, self.parent_run_id = experiment_id, parent
        self.running: int | None = None  # the trial in progress: the one an outage can cut

    def __call__(self, trial: optuna.Trial) -> float:
        self.running = trial.number
        loss = self._run(trial)  # TrialPruned and other errors leave `running` set on purpose
        self.running = None
        return loss

    def _run(self, trial: optuna.Trial) -> float:
        dead_run = trial.user_attrs.get(RUN_ATTR)  # set when this trial retries a killed one
        if dead_run:
            self.client.set_terminated(str(dead_run), status="KILLED")
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        pruned: optuna.TrialPruned | None = None
        with mlflow.start_run(
            experiment_id=self.experiment_id,
            run_name=f"trial-{trial.number}",
            parent_run_id=self.parent_run_id,
            nested=True,
        ) as run:
            trial.set_user_attr(RUN_ATTR, run.info.run_id)
            mlflow.set_tags({"optuna_study": trial.study.study_name, "optuna_trial": trial.number})
            mlflow.log_params(self.params)

            def report(step: int, resource: int, train_loss: float | None, valid_loss: float):
                logged = {"valid_loss": valid_loss}
                if train_loss is not None:
                    logged["train_loss"] = train_loss
                mlflow.log_metrics(logged, step=step)
                trial.report(valid_loss, step=resource)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after {resource}")

            try:
                loss, auc = self.trials(trial, report)
            except optuna.TrialPruned as error:
                pruned = error
                mlflow.set_tag("optuna_state", "PRUNED")
            else:
                mlflow.log_metrics({"best_valid_loss": loss, "valid_roc_auc": auc})
                mlflow.set_tag("optuna_state", "COMPLETE")
                trial.set_user_attr("valid_roc_auc", auc)
        if pruned is not None:
            raise pruned
        return loss


def _work(
    layout_home: Path,
    tracking: TrackingConfig,
    config: TuneConfig,
    fit_config: FitConfig,
    trees: TreesConfig | None,
    validation: ValidationConfig,
    worker: int = 0,
    threads: int | None = None,
    on_progress: OnProgress | None = None,
) -> None:
    """One worker: load the data, then run trials until the study has its budget."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    layout = DataLayout(layout_home).pinned()  # one build for the spec and the splits
    spec = FeatureSpec.load(layout.spec)
    tables = load_splits(layout, validation)
    tables["train"] = sampled(tables["train"], config.train_share, config.seed)  # all workers alike
    shared = {"train_rows": len(tables["train"])}
    if config.framework in TREES:
        base = trees or trees_config(config.framework)
        if base.framework != config.framework:
            raise ValueError(f"a {base.framework} config for a {config.framework} study")
        trials: Trials = TreesTrials(
            spec, tables, replace(base, threads=threads) if threads else base
        )
    else:
        trials = NetworkTrials(spec, tables, fit_config, config.epochs, config.framework)
    del tables  # the trials keep what they encoded
    client = tracking.client()
    # trials log through MLflow's fluent API: the whole worker runs inside the store's scope
    with fluent_tracking(tracking) as experiment:
        storage = open_storage(config, tracking.home)
        study = _study(storage, config, config.seed + worker, validation)
        parent = parent_run(client, storage, study, experiment)
        if finished_count(study) >= config.trials:
            return
        objective = Objective(trials, client, experiment, parent, shared)
        callbacks: list[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = [
            optuna.study.MaxTrialsCallback(config.trials, states=FINISHED)
        ]
        if on_progress:
            callbacks.append(lambda study, _: on_progress(finished_count(study)))
        while True:
            try:
                study.optimize(
                    objective,
                    n_trials=config.trials,  # an upper bound per process; the callback stops it
                    callbacks=callbacks,
                    gc_after_trial=True,
                )
                return
            except Exception as error:
                if not is_outage(error):
                    raise
                logger.warning("the study's database went away: waiting for it (%s)", error)
            wait_for_storage(storage, config.outage_patience_s)
            if objective.running is not None:
                recover_trial(study, storage, objective.running)
                objective.running = None


def _log_study(
    client: MlflowClient, study: optuna.Study, parent_run_id: str, budget: int
) -> dict[str, int]:
    """Counts, the best trial and Optuna's plots on the parent run; close it when done."""
    from optuna.visualization import matplotlib as optuna_plots

    trials = study.get_trials(deepcopy=False)
    counts = {
        state.name.lower(): sum(t.state == state for t in trials)
        for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    }
    for name, value in counts.items():
        client.log_metric(parent_run_id, f"trials_{name}", value)
    for key in (FRAMEWORK_ATTR, VALIDATION_ATTR, SAMPLE_ATTR):  # what the trials were run on
        client.set_tag(parent_run_id, f"study.{key}", json.dumps(study.user_attrs.get(key)))
    if counts["complete"]:
        best = study.best_trial
        client.log_metric(parent_run_id, "best_valid_loss", best.value)
        client.log_dict(
            parent_run_id, {"number": best.number, "params": best.params}, "best_trial.json"
        )
        client.set_tag(parent_run_id, "best_trial_run_id", best.user_attrs.get(RUN_ATTR, ""))
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)  # importances from few trials: a caveat
        drawings = {
            "optimization_history.png": optuna_plots.plot_optimization_history,
            "param_importances.png": optuna_plots.plot_param_importances,
            "intermediate_values.png": optuna_plots.plot_intermediate_values,
        }
        for name, draw in drawings.items():
            try:
                axes = draw(study)
            except (ValueError, RuntimeError) as error:  # e.g. importances need 2+ trials
                logger.info("no %s: %s", name, error)
                continue
            plots.save_png(axes.figure, Path(tmp) / name)
        client.log_artifacts(parent_run_id, tmp, "optuna")
    if counts["complete"] + counts["pruned"] >= budget:
        client.set_terminated(parent_run_id)
    return counts


def tune(
    layout: DataLayout,
    tracking: TrackingConfig,
    config: TuneConfig,
    fit_config: FitConfig,
    on_progress: OnProgress | None = None,
    trees: TreesConfig | None = None,
    validation: ValidationConfig = DEFAULT_VALIDATION,
) -> TuneResult:
    """Run (or resume) the study to its budget in `config.workers` processes."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    validation = validation.resolved(config.framework)  # what the study and its workers use
    client = tracking.client()
    storage = open_storage(config, tracking.home)
    study = _study(storage, config, config.seed, validation)
    parent = parent_run(client, storage, study, experiment_id(client, tracking))
    client.update_run(parent, status="RUNNING")
    if on_progress:
        on_progress(finished_count(study))
    if config.workers == 1:
        _work(layout.home, tracking, config, fit_config, trees, validation, on_progress=on_progress)
    else:
        _work_in_processes(
            layout, tracking, config, fit_config, trees, validation, study, on_progress
        )
    counts = _log_study(client, study, parent, config.trials)
    if not counts["complete"]:
        raise RuntimeError(f"study {config.study!r} has no complete trial: {counts}")
    return TuneResult(config.study, parent, study.best_params, study.best_value, counts)


def _work_in_processes(
    layout: DataLayout,
    tracking: TrackingConfig,
    config: TuneConfig,
    fit_config: FitConfig,
    trees: TreesConfig | None,
    validation: ValidationConfig,
    study: optuna.Study,
    on_progress: OnProgress | None,
) -> None:
    """`workers` spawned processes, the cores shared between them; progress read from the study."""
    threads = max(1, (os.cpu_count() or 1) // config.workers)
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(
            target=_work,
            args=(layout.home, tracking, config, fit_config, trees, validation, worker, threads),
            name=f"tune-worker-{worker}",
        )
        for worker in range(config.workers)
    ]
    for process in processes:
        process.start()
    while any(p.is_alive() for p in processes):
        if on_progress:
            try:
                on_progress(finished_count(study))
            except Exception as error:  # the workers ride out an outage: so does the bar
                if not is_outage(error):
                    raise
        time.sleep(1)
    failed = [p.name for p in processes if p.exitcode != 0]
    if failed:
        logger.warning("tuning workers %s exited with an error; their trials are retried", failed)
