"""Benchmark: the network's test-month quality against LightGBM, and the fit loop's throughput.

Every figure is a ratio against a baseline run by this script, on the same data, in the same
process, because the machines are shared and noisy:

- quality: test ROC-AUC and log loss, the mean of `--seeds` seeds, of TabularNet
  (`training.fit.fit`) and of the same network in JAX and in TensorFlow (`training.jax_network`,
  `training.tf_network`, when their extras are installed), every model validated on the rows
  `mlops train` validates on (`--validation`), against the project's LightGBM and CatBoost
  (`training.gbdt`, what `mlops train --framework lightgbm|catboost` fits), each with its
  defaults and tuned by an Optuna study of `--lgbm-trials` trials on those rows
  (`training.tune`, as
  `mlops tune --framework ...`), and paired bootstraps over test days of (net - the best tuned
  GBDT, the one with the higher mean test ROC-AUC); per framework,
  training samples/s, its ONNX model's latency, and what its extra adds to an install;
- throughput: training samples/s of `training.fit.fit` against a bare loop over the same
  device-resident tensors (goal: at least 0.9x) and against a per-sample Dataset/DataLoader;
- ensemble: samples/s of the default ensemble's training step as `TabularNet` computes it
  (fp32, and bf16 autocast) against the formulation it replaced (`PaperTabM`);
- tuning: `training.tune.tune` with Hyperband pruning against no pruning, the same budget of
  trials and the same TPE seed: trials per minute and the best validation loss.

The feature table is built once (ingest of the bundled data, then `build_features_pandas`)
under `--workdir`, or read from `--home` when that already holds `data/current/feature_spec.json`:

    python benchmarks/bench_training.py --seeds 3

Writes benchmarks/results/training.json and prints the rows for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import UTC, datetime
from importlib.util import find_spec
from pathlib import Path

# ruff: noqa: E402
# Run as a script, this folder comes first on sys.path, where benchmarks/serving.py would
# shadow the `serving` package: put the repository root there instead.
ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "benchmarks":
    sys.path[0] = str(ROOT)

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.logging import RichHandler
from torch import nn

from mlops.settings import Settings
from pipelines.layout import SPLITS, DataLayout
from pipelines.metrics import log_loss, roc_auc
from pipelines.spec import LABEL, FeatureSpec
from pipelines.storage import read_parquet_folder
from training.config import (
    FRAMEWORKS,
    TREES,
    TrackingConfig,
    TreesConfig,
    TuneConfig,
    ValidationConfig,
    trees_config,
)
from training.fit import (
    FitConfig,
    autocast,
    fit,
    fresh_model,
    predict_logits,
    training_loss,
    training_precision,
)
from training.metrics import sigmoid
from training.model import ModelConfig, TabularNet
from training.tensors import Tensors, pick_device, to_tensors
from training.train import held_out

SECTIONS = ("quality", "throughput", "ensemble", "tuning", "selection")
THROUGHPUT_GOAL = 0.9  # fit / bare loop

logger = logging.getLogger("benchmarks.training")
console = Console(highlight=False, soft_wrap=True)


# --- data ---------------------------------------------------------------------------------


def prepare_home(args: argparse.Namespace) -> Path:
    """A home with the feature table: `--home` as it is, else built once under `--workdir`."""
    if args.home is not None:
        if not DataLayout(args.home).spec.exists():
            raise SystemExit(f"{args.home} has no data/current/feature_spec.json")
        return args.home
    home = args.workdir
    layout = DataLayout(home)
    if layout.spec.exists():
        logger.info("reusing the feature table in %s", home)
        return home
    from pipelines.features import build_features_pandas
    from pipelines.ingest import ingest
    from pipelines.splits import SplitPlan

    if not layout.months("flights"):
        start = time.perf_counter()
        ingest(layout)
        logger.info("ingested the bundled data into %s in %.1f s", home, _since(start))
    start = time.perf_counter()
    build_features_pandas(layout, SplitPlan())
    logger.info("built the feature table in %.1f s", _since(start))
    return home


def load_tables(home: Path, max_train_rows: int | None) -> tuple[FeatureSpec, dict]:
    layout = DataLayout(home)
    spec = FeatureSpec.load(layout.spec)
    tables = {split: read_parquet_folder(layout.split(split)) for split in SPLITS}
    if max_train_rows is not None and len(tables["train"]) > max_train_rows:
        tables["train"] = (
            tables["train"].sample(max_train_rows, random_state=0).reset_index(drop=True)
        )
    logger.info("rows: %s", {split: len(t) for split, t in tables.items()})
    return spec, tables


def configs(args: argparse.Namespace) -> tuple[ModelConfig, FitConfig]:
    """The Settings defaults (`MLOPS_MODEL__*`, `MLOPS_FIT__*` apply), then the options."""
    settings = Settings()
    model, fit_config = settings.model, settings.fit
    overrides = {
        "width": args.width,
        "depth": args.depth,
        "numeric_embedding": args.numeric_embedding,
    }
    model = replace(model, **{k: v for k, v in overrides.items() if v is not None})
    fit_overrides = {"epochs": args.epochs, "batch_size": args.batch_size}
    fit_config = replace(fit_config, **{k: v for k, v in fit_overrides.items() if v is not None})
    return model, fit_config


def validation_of(args: argparse.Namespace) -> ValidationConfig:
    """The validation split `mlops train` uses (`MLOPS_VALIDATION__*`), or `--validation`'s."""
    validation = Settings().validation
    return replace(validation, split=args.validation) if args.validation else validation


def _since(start: float) -> float:
    return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- quality ------------------------------------------------------------------------------


def tune_trees(args: argparse.Namespace, home: Path, framework: str) -> tuple[TreesConfig, dict]:
    """The trees' study as `mlops tune --framework <framework>` runs it (TPE, Hyperband on
    rounds, early stopping on the validation rows), in a scratch store so nothing lands in
    `home`'s."""
    from training.tune import best_trees, tune

    scratch = Path(tempfile.mkdtemp(prefix=f"bench-{framework}-"))
    config = TuneConfig(trials=args.lgbm_trials, study=f"bench-{framework}", framework=framework)
    start = time.perf_counter()
    base = trees_config(framework)
    validation = validation_of(args)
    tuned = tune(
        DataLayout(home), TrackingConfig(scratch), config, FitConfig(), None, base, validation
    )
    seconds = _since(start)
    shutil.rmtree(scratch, ignore_errors=True)
    best = best_trees(tuned.best_params, base)
    logger.info(
        "%s study: %s, best valid loss %.4f, %.0f s",
        framework,
        tuned.counts,
        tuned.best_valid_loss,
        seconds,
    )
    return best, {
        "trials": args.lgbm_trials,
        "counts": tuned.counts,
        "best_valid_loss": tuned.best_valid_loss,
        "best_params": tuned.best_params,
        "tune_seconds": seconds,
    }


def run_trees(
    args: argparse.Namespace, spec: FeatureSpec, tables: dict, config: TreesConfig
) -> tuple[dict, list[np.ndarray]]:
    """`training.gbdt.fit_trees`, as `mlops train --framework lightgbm` (or `catboost`) fits,
    for each seed."""
    from pipelines.spec import part_of
    from training.gbdt import fit_trees

    parts = {split: part_of(tables[split], spec) for split in SPLITS}
    codes, values, labels = parts["test"]
    runs, probabilities, first = [], [], None
    for seed in range(args.seeds):
        start = time.perf_counter()
        boosted = fit_trees(spec, parts["train"], parts["valid"], replace(config, seed=seed))
        first = first or boosted.model
        seconds = _since(start)
        p = boosted.model.predict(codes, values).astype("float64")
        probabilities.append(p)
        runs.append(
            {
                "seed": seed,
                "test_roc_auc": roc_auc(labels, p),
                "test_log_loss": log_loss(labels, p),
                "best_round": boosted.best_round,
                "fit_seconds": seconds,
            }
        )
    cost = onnx_latency(first, codes, values)
    return _summary(runs, labels, probabilities) | {
        "config": asdict(config),
        "onnx": cost,
    }, probabilities


def onnx_latency(candidate, codes: np.ndarray, values: np.ndarray, repeats: int = 200) -> dict:
    """The exported model in a session configured as the server's (one thread): the median
    milliseconds of a call at batch 1 and 1,024, and the file's size."""
    from training.export import session

    with tempfile.TemporaryDirectory() as tmp:
        path = candidate.export_onnx(codes, values, Path(tmp) / "model.onnx")
        runtime = session(path, threads=1)
        size = path.stat().st_size
    figures = {"bytes": size}
    for batch in (1, 1024):
        feed = {"categorical": codes[:batch], "numerical": values[:batch]}
        runtime.run(None, feed)
        times = []
        for _ in range(repeats if batch == 1 else repeats // 10):
            start = time.perf_counter()
            runtime.run(None, feed)
            times.append(time.perf_counter() - start)
        figures[f"batch_{batch}_ms"] = 1000 * statistics.median(times)
    return figures


def _summary(runs: list[dict], labels: np.ndarray, probabilities: list[np.ndarray]) -> dict:
    """The mean of the seeds' figures (what the issue asks for) and the seeds' ensemble."""
    ensemble = np.mean(probabilities, axis=0)
    return {
        "seeds": len(runs),
        "test_roc_auc": statistics.fmean(r["test_roc_auc"] for r in runs),
        "test_log_loss": statistics.fmean(r["test_log_loss"] for r in runs),
        "ensemble_test_roc_auc": roc_auc(labels, ensemble),
        "ensemble_test_log_loss": log_loss(labels, ensemble),
        "runs": runs,
    }


def paired_bootstrap_by_day(
    days: np.ndarray,
    labels: np.ndarray,
    first: list[np.ndarray],
    second: list[np.ndarray],
    resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """(first - second) in mean-over-seeds ROC-AUC and log loss, with 95% percentile intervals,
    resampling whole days of the test months (flights of one day share weather and delays, so
    a day is the unit that is independent, not a flight)."""
    unique, index = np.unique(days, return_inverse=True)
    rows_of = [np.flatnonzero(index == d) for d in range(len(unique))]
    generator = np.random.default_rng(seed)

    def figures(rows: np.ndarray) -> tuple[float, float]:
        y = labels[rows]
        auc = [statistics.fmean(roc_auc(y, p[rows]) for p in side) for side in (first, second)]
        loss = [statistics.fmean(log_loss(y, p[rows]) for p in side) for side in (first, second)]
        return auc[0] - auc[1], loss[0] - loss[1]

    point = figures(np.arange(len(labels)))
    draws = np.array(
        [
            figures(
                np.concatenate(
                    [rows_of[d] for d in generator.integers(0, len(unique), len(unique))]
                )
            )
            for _ in range(resamples)
        ]
    )
    low, high = np.percentile(draws, [2.5, 97.5], axis=0)
    return {
        "days": len(unique),
        "resamples": resamples,
        "auc_difference": point[0],
        "auc_interval": [float(low[0]), float(high[0])],
        "log_loss_difference": point[1],
        "log_loss_interval": [float(low[1]), float(high[1])],
    }


def _samples_per_s(history: list) -> float:
    """The median epoch's training speed (the first epoch also compiles, under JAX)."""
    return statistics.median(e.samples_per_s for e in history)


def _network_run(
    name: str, seed: int, labels: np.ndarray, p: np.ndarray, result, seconds: float
) -> dict:
    """One seed's figures of a network fit (either framework's `FitResult`), logged."""
    run = {
        "seed": seed,
        "test_roc_auc": roc_auc(labels, p),
        "test_log_loss": log_loss(labels, p),
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "best_valid_loss": result.best_valid_loss,
        "fit_seconds": seconds,
        "samples_per_s": _samples_per_s(result.history),
    }
    logger.info(
        "%s seed %d: test AUC %.4f, log loss %.4f, best epoch %d of %d, %.0f s",
        name,
        seed,
        run["test_roc_auc"],
        run["test_log_loss"],
        result.best_epoch,
        len(result.history),
        seconds,
    )
    return run


def run_ported_network(
    args: argparse.Namespace,
    framework: str,
    spec: FeatureSpec,
    tables: dict,
    model_config: ModelConfig,
    fit_config: FitConfig,
) -> tuple[dict, list[np.ndarray]]:
    """The network ported to `framework` ("jax": `training.jax_network.fit_jax`, "tf":
    `training.tf_network.fit_tf`), as `mlops train --framework <framework>` fits, each seed."""
    from pipelines.spec import part_of
    from training.train import ported

    fit_ported, backend = ported(framework)
    parts = {split: part_of(tables[split], spec) for split in SPLITS}
    codes, values, labels = parts["test"]
    runs, probabilities, first = [], [], None
    for seed in range(fit_config.seed, fit_config.seed + args.seeds):
        start = time.perf_counter()
        network, result = fit_ported(
            spec, model_config, parts["train"], parts["valid"], replace(fit_config, seed=seed)
        )
        seconds = _since(start)
        first = first or network
        p = network.predict(codes, values).astype("float64")
        probabilities.append(p)
        runs.append(_network_run(framework, seed, labels, p, result, seconds))
    summary = _summary(runs, labels, probabilities) | {
        "onnx": onnx_latency(first, codes, values),
        "backend": backend,
    }
    return summary, probabilities


PORTS = {"jax": "jax2onnx", "tf": "tf2onnx"}  # the network's other frameworks, by their export


def install_megabytes(framework: str) -> float:
    """What a framework adds to an install of the project's base and training dependencies:
    the installed size of the distributions that only its own requirements pull in (torch:
    the `torch` requirement of the `train` extra; the others: their extra)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    def closure(requirements: list[str]) -> set[str]:
        seen: set[str] = set()
        todo = list(requirements)
        while todo:
            requirement = Requirement(todo.pop())
            name = requirement.name.lower().replace("_", "-")
            if name in seen or (requirement.marker and not requirement.marker.evaluate()):
                continue
            try:
                dist = metadata.distribution(name)
            except metadata.PackageNotFoundError:
                continue
            seen.add(name)
            todo += [r for r in dist.requires or [] if "extra ==" not in r]
        return seen

    declared = metadata.distribution("mlops-flights").requires or []

    def extra(name: str) -> list[str]:
        return [r.split(";")[0] for r in declared if f'extra == "{name}"' in r]

    base = [r for r in declared if "extra ==" not in r] + extra("train")
    if framework == "torch":
        own = [r for r in base if Requirement(r).name == "torch"]
        base = [r for r in base if r not in own]
    else:
        own = extra(framework)
    total = 0
    for name in closure(own) - closure(base):
        for file in metadata.distribution(name).files or []:
            path = Path(str(file.locate()))
            if path.is_file():
                total += path.stat().st_size
    return total / 1e6


def run_network(
    args: argparse.Namespace,
    spec: FeatureSpec,
    tables: dict,
    model_config: ModelConfig,
    fit_config: FitConfig,
    device: torch.device,
) -> dict:
    tensors = {split: to_tensors(tables[split], spec, device) for split in SPLITS}
    labels = tables["test"][LABEL].to_numpy("int64")
    runs, probabilities, first = [], [], None
    for seed in range(fit_config.seed, fit_config.seed + args.seeds):
        config = replace(fit_config, seed=seed)
        model = fresh_model(spec, model_config, seed, device)
        first = first or model
        start = time.perf_counter()
        result = fit(model, tensors["train"], tensors["valid"], config)
        seconds = _since(start)
        p = sigmoid(predict_logits(model, tensors["test"]).cpu().numpy().astype("float64"))
        probabilities.append(p)
        runs.append(_network_run("net", seed, labels, p, result, seconds))
    from training.network import Network

    test = tensors["test"]
    cost = onnx_latency(
        Network(first), test.categorical.cpu().numpy(), test.numerical.cpu().numpy()
    )
    return _summary(runs, labels, probabilities) | {"onnx": cost}, probabilities


def quality_section(
    args: argparse.Namespace,
    spec: FeatureSpec,
    tables: dict,
    model_config: ModelConfig,
    fit_config: FitConfig,
    device: torch.device,
) -> dict:
    # every model validates on the rows `mlops train` would (the test months untouched)
    validation = validation_of(args)
    raw, tables = tables, held_out(tables, validation.resolved("torch"))
    trees_tables = held_out(raw, validation.resolved("lightgbm"))
    gbdt: dict[str, dict] = {}
    probabilities: dict[str, list[np.ndarray]] = {}
    for framework in TREES:
        if find_spec(framework) is None:
            logger.info("quality: no %s (the `%s` extra is not installed)", framework, framework)
            continue
        logger.info("quality: %s untuned (the defaults), %d seed(s)", framework, args.seeds)
        untuned = trees_config(framework)
        gbdt[f"{framework}_untuned"], _ = run_trees(args, spec, trees_tables, untuned)
        logger.info("quality: %s tuned, a study of %d trials", framework, args.lgbm_trials)
        best, study = tune_trees(args, args.tuning_home, framework)
        tuned, probabilities[framework] = run_trees(args, spec, trees_tables, best)
        gbdt[framework] = tuned | {"study": study}
    # the best GBDT: the tuned library with the higher mean test ROC-AUC
    best_gbdt = max(probabilities, key=lambda name: gbdt[name]["test_roc_auc"])
    trees, tuned = probabilities[best_gbdt], gbdt[best_gbdt]
    logger.info("quality: TabularNet, %d seed(s)", args.seeds)
    net, nets = run_network(args, spec, tables, model_config, fit_config, device)
    test = tables["test"]
    days, labels = test["scheduled_departure"].dt.date.to_numpy(), test[LABEL].to_numpy()
    bootstrap = paired_bootstrap_by_day(days, labels, nets, trees)
    frameworks: dict = {}
    for framework, export in PORTS.items():
        if find_spec(export) is None:
            logger.info("quality: no %s network (its extra is not installed)", framework)
            continue
        logger.info("quality: TabularNet in %s, %d seed(s)", framework, args.seeds)
        ported_net, ported_nets = run_ported_network(
            args, framework, spec, tables, model_config, fit_config
        )
        frameworks[framework] = ported_net | {
            "bootstrap_vs_gbdt": paired_bootstrap_by_day(days, labels, ported_nets, trees),
            "bootstrap_vs_torch": paired_bootstrap_by_day(days, labels, ported_nets, nets),
        }
    installs = {framework: install_megabytes(framework) for framework in FRAMEWORKS}
    for name, figures in {**gbdt, "net": net}.items():
        logger.info(
            "%s: test AUC %.4f, log loss %.4f (mean of %d seeds)",
            name,
            figures["test_roc_auc"],
            figures["test_log_loss"],
            figures["seeds"],
        )
    return {
        "validation": {
            "networks": validation.resolved("torch").as_params(),
            "trees": validation.resolved("lightgbm").as_params(),
        },
        "test_rows": len(test),
        "test_positive_rate": float(test[LABEL].mean()),
        **gbdt,  # <library>_untuned and <library> (tuned) for each library installed
        "best_gbdt": best_gbdt,
        "network": net,
        "auc_gap": net["test_roc_auc"] - tuned["test_roc_auc"],  # negative: the net is behind
        "log_loss_ratio": net["test_log_loss"] / tuned["test_log_loss"],  # above 1: behind
        "bootstrap": bootstrap,
        "frameworks": frameworks,  # the network in frameworks other than torch
        "install_megabytes": installs,
    }


# --- throughput ---------------------------------------------------------------------------


class RowDataset(torch.utils.data.Dataset):
    """The textbook per-sample Dataset: one row of each tensor per __getitem__."""

    def __init__(self, data: Tensors) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.data.categorical[i], self.data.numerical[i], self.data.label[i]


def _step(model, optimizer, categorical, numerical, label, device, precision: str) -> None:
    with autocast(device, precision):  # as training.fit's steps
        logits = model(categorical, numerical)
    loss = training_loss(logits, label)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _optimizer(model: nn.Module, config: FitConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )


def time_fit(model, train: Tensors, valid: Tensors, config: FitConfig, device) -> dict:
    """The real loop; its epoch clocks leave out the validation pass and the best-weights copy."""
    start = time.perf_counter()
    result = fit(model, train, valid, config)
    wall = _since(start)
    seconds = sum(e.seconds for e in result.history)
    samples = len(train) * len(result.history)
    return {
        "samples": samples,
        "seconds": seconds,
        "samples_per_s": samples / seconds,
        "wall_seconds": wall,
        "wall_samples_per_s": samples / wall,
        "epoch_samples_per_s": [e.samples_per_s for e in result.history],
    }


def time_bare(model, train: Tensors, config: FitConfig, device, steps: int | None = None) -> dict:
    """randperm, slice, forward, BCE-with-logits, backward, step; nothing else."""
    optimizer = _optimizer(model, config)
    precision = training_precision(device, config.precision)  # as fit: once, not per step
    model.train()
    generator = torch.Generator(device=device).manual_seed(config.seed)
    samples, done = 0, 0
    _sync(device)
    start = time.perf_counter()
    for _ in range(config.epochs):
        order = torch.randperm(len(train), device=device, generator=generator)
        for begin in range(0, len(train), config.batch_size):
            index = order[begin : begin + config.batch_size]
            _step(
                model,
                optimizer,
                train.categorical[index],
                train.numerical[index],
                train.label[index],
                device,
                precision,
            )
            samples += len(index)
            done += 1
            if steps is not None and done >= steps:
                break
        if steps is not None and done >= steps:
            break
    _sync(device)
    seconds = _since(start)
    return {"samples": samples, "seconds": seconds, "samples_per_s": samples / seconds}


def time_dataloader(model, train_cpu: Tensors, config: FitConfig, device) -> dict:
    """A per-sample Dataset and a DataLoader (default collate, no workers), copied per batch."""
    optimizer = _optimizer(model, config)
    precision = training_precision(device, config.precision)  # as fit: once, not per step
    model.train()
    loader = torch.utils.data.DataLoader(
        RowDataset(train_cpu),
        batch_size=config.batch_size,
        shuffle=True,
        num_workers=0,
        generator=torch.Generator().manual_seed(config.seed),
    )
    samples = 0
    _sync(device)
    start = time.perf_counter()
    for _ in range(config.epochs):
        for categorical, numerical, label in loader:
            _step(
                model,
                optimizer,
                categorical.to(device, non_blocking=True),
                numerical.to(device, non_blocking=True),
                label.to(device, non_blocking=True),
                device,
                precision,
            )
            samples += len(label)
    _sync(device)
    seconds = _since(start)
    return {"samples": samples, "seconds": seconds, "samples_per_s": samples / seconds}


def throughput_section(
    args: argparse.Namespace,
    spec: FeatureSpec,
    tables: dict,
    model_config: ModelConfig,
    fit_config: FitConfig,
    device: torch.device,
) -> dict:
    # A fixed number of epochs: patience above it, so fit never stops early.
    config = replace(fit_config, epochs=args.throughput_epochs, patience=args.throughput_epochs + 1)
    train = to_tensors(tables["train"], spec, device)
    valid = to_tensors(tables["valid"], spec, device)
    train_cpu = train.to("cpu")
    seed = config.seed

    logger.info("throughput: warm-up, %d steps", args.warmup_steps)
    warm = fresh_model(spec, model_config, seed, device)
    time_bare(warm, train, config, device, steps=args.warmup_steps)

    variants: dict[str, Callable[[TabularNet], dict]] = {
        "fit": lambda m: time_fit(m, train, valid, config, device),
        "bare": lambda m: time_bare(m, train, config, device),
        "dataloader": lambda m: time_dataloader(m, train_cpu, config, device),
    }
    repeats: dict[str, list[dict]] = {name: [] for name in variants}
    for r in range(args.repeats):  # interleaved, so drift in the machine hits every variant
        for name, run in variants.items():
            figures = run(fresh_model(spec, model_config, seed, device))
            repeats[name].append(figures)
            logger.info(
                "throughput repeat %d, %s: %d samples in %.1f s, %.0f samples/s",
                r,
                name,
                figures["samples"],
                figures["seconds"],
                figures["samples_per_s"],
            )
    median = {
        name: statistics.median(f["samples_per_s"] for f in runs) for name, runs in repeats.items()
    }
    return {
        "train_rows": len(train),
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "repeats": repeats,
        "samples_per_s": median,
        "fit_over_bare": median["fit"] / median["bare"],
        "fit_over_dataloader": median["fit"] / median["dataloader"],
        "goal_fit_over_bare": THROUGHPUT_GOAL,
        "goal_met": median["fit"] / median["bare"] >= THROUGHPUT_GOAL,
    }


# --- the ensemble's step ---------------------------------------------------------------------


class PaperTabM(TabularNet):
    """The ensemble as it was computed before (and as the TabM paper writes it): each member's
    copy of the backbone's input, scaled by its signs, through the whole backbone, with
    torch's own dropout. The same parameters and function as `TabularNet`."""

    def __init__(self, spec: FeatureSpec, config: ModelConfig) -> None:
        super().__init__(spec, config)
        for module in self.modules():
            for name, child in module.named_children():
                if isinstance(child, nn.Dropout):
                    setattr(module, name, nn.Dropout(child.p))

    def forward(self, categorical: torch.Tensor, numerical: torch.Tensor) -> torch.Tensor:
        members = self.config.members
        inputs = self.embed(categorical, numerical)
        hidden = self.backbone((inputs.unsqueeze(1) * self.adapter).flatten(0, 1))
        logits = (hidden.unflatten(0, (-1, members)) * self.member_head).sum(-1)
        return logits + self.member_bias  # training mode only: the members' logits


def ensemble_section(
    args: argparse.Namespace,
    spec: FeatureSpec,
    tables: dict,
    model_config: ModelConfig,
    fit_config: FitConfig,
    device: torch.device,
) -> dict:
    """Training samples/s of the default ensemble's step: as computed before (`PaperTabM`,
    fp32), as `TabularNet` computes it (the signs folded into the first layer, the CPU's
    dropout drawn four values per random word) in fp32, and with bf16 autocast; the same
    `--ensemble-steps` steps of the bare loop each, interleaved over `--repeats` rounds."""
    train = to_tensors(tables["train"], spec, device)
    variants = {
        "before (paper's formulation, torch's dropout), fp32": (PaperTabM, "fp32"),
        "folded first layer, CPU dropout, fp32": (TabularNet, "fp32"),
        "folded first layer, CPU dropout, bf16": (TabularNet, "bf16"),
    }
    speeds: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.repeats):
        for name, (kind, precision) in variants.items():
            config = replace(fit_config, precision=precision)
            torch.manual_seed(config.seed)
            model = kind(spec, model_config).to(device)
            time_bare(model, train, config, device, steps=args.warmup_steps)
            figures = time_bare(model, train, config, device, steps=args.ensemble_steps)
            speeds[name].append(figures["samples_per_s"])
            logger.info("ensemble round %d, %s: %.0f samples/s", r, name, speeds[name][-1])
    median = {name: statistics.median(v) for name, v in speeds.items()}
    baseline = median[next(iter(variants))]
    return {
        "members": model_config.members,
        "batch_size": fit_config.batch_size,
        "steps": args.ensemble_steps,
        "rounds": args.repeats,
        "repeats": speeds,
        "samples_per_s": median,
        "over_before": {name: v / baseline for name, v in median.items()},
    }


# --- tuning -------------------------------------------------------------------------------


def tuning_section(
    args: argparse.Namespace,
    spec: FeatureSpec,
    tables: dict,
    model_config: ModelConfig,
    fit_config: FitConfig,
    device: torch.device,
) -> dict:
    """The same study budget with and without pruning; trial time from the study's clocks."""
    import tempfile

    import optuna

    from training.config import TrackingConfig
    from training.study import open_storage
    from training.tune import TuneConfig, tune

    del model_config, device  # the study chooses the model; the data stays in `args.home`
    results: dict[str, dict] = {}
    for pruner in ("hyperband", "none"):
        with tempfile.TemporaryDirectory() as state:
            config = TuneConfig(
                trials=args.tune_trials, epochs=args.tune_epochs, pruner=pruner, study=pruner
            )
            tracking = TrackingConfig(Path(state))
            result = tune(DataLayout(args.tuning_home), tracking, config, fit_config)
            trials = optuna.load_study(
                study_name=pruner, storage=open_storage(config, Path(state))
            ).get_trials()
            started = min(t.datetime_start for t in trials)
            ended = max(t.datetime_complete for t in trials)
            minutes = (ended - started).total_seconds() / 60
            results[pruner] = {
                "trials": len(trials),
                "counts": result.counts,
                "epochs_trained": sum(len(t.intermediate_values) for t in trials),
                "minutes": minutes,
                "trials_per_minute": len(trials) / minutes,
                "best_valid_loss": result.best_valid_loss,
                "best_params": result.best_params,
            }
            logger.info("tuning with pruner %s: %s", pruner, results[pruner])
    pruned, unpruned = results["hyperband"], results["none"]
    return {
        "trials": args.tune_trials,
        "max_epochs": args.tune_epochs,
        "studies": results,
        "speedup": pruned["trials_per_minute"] / unpruned["trials_per_minute"],
        "best_valid_loss_ratio": pruned["best_valid_loss"] / unpruned["best_valid_loss"],
    }


# --- model selection ----------------------------------------------------------------------


def selection_section(
    args: argparse.Namespace,
    spec: FeatureSpec,
    tables: dict,
    model_config: ModelConfig,
    fit_config: FitConfig,
    device: torch.device,
) -> dict:
    """Three ways to choose the network's weights from the labelled months L, chosen by a
    backtest that never sees the test months:

    - `early stopping`: train on L but its last month, stop early on that month (today's);
    - `refit`: then train again on all of L for the number of epochs early stopping chose;
    - `random split`: stop early on a random 10% of L, train on the rest.

    The backtest runs each protocol one month earlier (L = Jan–Sep, scored on October), the
    final run on L = Jan–Oct, scored once on Nov–Dec. The feature spec (vocabularies,
    statistics, the clipping range) is the table's, built on Jan–Sep: the backtest's October
    is outside it, as the test months are outside the final run's.
    """
    months = {split: tables[split]["scheduled_departure"].dt.strftime("%Y-%m") for split in SPLITS}
    last = sorted(months["train"].unique())[-1]
    plans = {
        "backtest": (
            tables["train"],
            tables["train"][months["train"] == last],
            tables["train"][months["train"] != last],
            tables["valid"],
        ),
        "final": (
            pd.concat([tables["train"], tables["valid"]], ignore_index=True),
            tables["valid"],
            tables["train"],
            tables["test"],
        ),
    }
    runs = [
        _selection_runs(spec, plans, model_config, replace(fit_config, seed=seed), device)
        for seed in range(args.seeds)
    ]
    results = {
        stage: {
            name: {
                key: statistics.fmean(run[stage][name][key] for run in runs)
                for key in ("roc_auc", "log_loss", "epochs", "fit_seconds")
            }
            | {"seeds": [run[stage][name] for run in runs]}
            for name in runs[0][stage]
        }
        for stage in plans
    }
    chosen = max(results["backtest"], key=lambda name: results["backtest"][name]["roc_auc"])
    return {
        "seeds": args.seeds,
        "backtest": results["backtest"],
        "final": results["final"],
        "chosen": chosen,
    }


def _selection_runs(
    spec: FeatureSpec,
    plans: dict[str, tuple[pd.DataFrame, ...]],
    model_config: ModelConfig,
    fit_config: FitConfig,
    device: torch.device,
) -> dict[str, dict]:
    """Each protocol at each stage, with one seed (the split's draw and the networks')."""
    results: dict[str, dict] = {}
    for stage, (labelled, last_month, before, target) in plans.items():
        rng = np.random.default_rng(fit_config.seed)
        held = rng.random(len(labelled)) < 0.1
        target_set = to_tensors(target, spec, device)
        labels = target[LABEL].to_numpy("int64")

        def score(model: nn.Module, target_set: Tensors = target_set, labels=labels) -> dict:
            p = sigmoid(predict_logits(model, target_set).cpu().numpy().astype("float64"))
            return {"roc_auc": roc_auc(labels, p), "log_loss": log_loss(labels, p)}

        def fitted(train_table, valid_table, config: FitConfig, restore_best: bool = True):
            model = fresh_model(spec, model_config, config.seed, device)
            start = time.perf_counter()
            result = fit(
                model,
                to_tensors(train_table, spec, device),
                to_tensors(valid_table, spec, device),
                config,
                restore_best=restore_best,
            )
            return model, result, _since(start)

        stopped, result, seconds = fitted(before, last_month, fit_config)
        epochs = result.best_epoch + 1
        refit_config = replace(fit_config, epochs=epochs, patience=epochs)
        refit, _, refit_seconds = fitted(labelled, last_month, refit_config, restore_best=False)
        split, split_result, split_seconds = fitted(labelled[~held], labelled[held], fit_config)
        results[stage] = {
            "early stopping": score(stopped) | {"epochs": epochs, "fit_seconds": seconds},
            "refit": score(refit) | {"epochs": epochs, "fit_seconds": refit_seconds},
            "random split": score(split)
            | {"epochs": split_result.best_epoch + 1, "fit_seconds": split_seconds},
        }
        logger.info("selection, seed %d, %s: %s", fit_config.seed, stage, results[stage])
    return results


# --- report -------------------------------------------------------------------------------


def environment(device: torch.device) -> dict:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        cpu = platform.processor() or platform.machine()
        name = f"CPU ({cpu}), {torch.get_num_threads()} torch threads"
    return {
        "device": device.type,
        "device_name": name,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),  # others' work skews the figures
        "date": datetime.now(UTC).date().isoformat(),
    }


def markdown(results: dict) -> list[str]:
    env = results["environment"]
    lines = [
        f"Device: {env['device_name']}; torch {env['torch']}; {env['date']}.",
        f"Model: `{json.dumps(results['model'])}`; fit: `{json.dumps(results['fit'])}`.",
    ]
    if "quality" in results:
        q = results["quality"]
        net, boot, best = q["network"], q["bootstrap"], q.get("best_gbdt", "lightgbm")
        libraries = [name for name in TREES if name in q]
        library_name = {"lightgbm": "LightGBM", "catboost": "CatBoost"}

        def row(name: str, figures: dict, note: str) -> str:
            return (
                f"| {name} | {figures['test_roc_auc']:.4f} | {figures['test_log_loss']:.4f} "
                f"| {figures['ensemble_test_roc_auc']:.4f} "
                f"| {sum(r['fit_seconds'] for r in figures['runs']):.0f} | {note} |"
            )

        lines += [
            "",
            f"Mean of {net['seeds']} seeds; the ensemble is the seeds' mean probability.",
            "",
            "| model | test ROC-AUC | test log loss | ensemble AUC | fit s | note |",
            "|---|---|---|---|---|---|",
        ]
        for name in libraries:
            tuned = q[name]
            rounds = ", ".join(str(r["best_round"] + 1) for r in tuned["runs"])
            lines += [
                row(f"{library_name[name]}, defaults", q[f"{name}_untuned"], "its config's"),
                row(
                    f"{library_name[name]}, tuned ({tuned['study']['trials']} trials)",
                    tuned,
                    f"rounds {rounds}; study {tuned['study']['tune_seconds']:.0f} s",
                ),
            ]
        others = q.get("frameworks", {})
        networks = {"TabularNet": net} | {
            f"TabularNet in {n.upper()}": f for n, f in others.items()
        }
        for name, figures in networks.items():
            epochs = ", ".join(str(r["best_epoch"]) for r in figures["runs"])
            lines.append(row(name, figures, f"best epochs {epochs}"))
        lines += [
            f"| net − best GBDT ({library_name[best]}, tuned) | **{q['auc_gap']:+.4f}** "
            f"| **{q['log_loss_ratio']:.3f}x** | | | |",
            "",
            "Paired bootstraps over the test days (1,000 resamples each), mean-of-seeds "
            "ROC-AUC and log loss with 95% intervals:",
            "",
        ]

        def interval(name: str, b: dict) -> str:
            return (
                f"- {name}: ROC-AUC {b['auc_difference']:+.4f} [{b['auc_interval'][0]:+.4f}, "
                f"{b['auc_interval'][1]:+.4f}], log loss {b['log_loss_difference']:+.4f} "
                f"[{b['log_loss_interval'][0]:+.4f}, {b['log_loss_interval'][1]:+.4f}]"
            )

        lines.append(interval(f"net − tuned {library_name[best]} ({boot['days']} days)", boot))
        for name, figures in others.items():
            lines.append(
                interval(f"{name} − tuned {library_name[best]}", figures["bootstrap_vs_gbdt"])
            )
            lines.append(interval(f"{name} − TabularNet", figures["bootstrap_vs_torch"]))
        lines.append("")
        for name in libraries:
            params = json.dumps(q[name]["study"]["best_params"])
            lines.append(f"Tuned {library_name[name]}: `{params}`.")
        lines += [
            "",
            "ONNX Runtime, one thread, median ms per call (the first seed's model):",
            "",
            "| model | batch 1 | batch 1,024 | file |",
            "|---|---|---|---|",
        ]
        named = {f"{library_name[n]}, tuned": q[n] for n in libraries} | networks
        for name, figures in named.items():
            cost = figures["onnx"]
            lines.append(
                f"| {name} | {cost['batch_1_ms']:.3f} | {cost['batch_1024_ms']:.2f} "
                f"| {cost['bytes'] / 1e6:.1f} MB |"
            )
        installs = q.get("install_megabytes", {})
        lines += [
            "",
            "| framework | fit s per seed | training samples/s (median epoch) | install MB |",
            "|---|---|---|---|",
        ]
        fits = {"torch": net} | others | {n: q[n] for n in libraries}
        for name, figures in fits.items():
            runs = figures["runs"]
            speeds = [r["samples_per_s"] for r in runs if "samples_per_s" in r]
            speed = f"{statistics.fmean(speeds):,.0f}" if speeds else "n/a (boosting)"
            install = installs.get(name)
            size = f"{install:.0f}" if install is not None else "?"
            seconds = statistics.fmean(r["fit_seconds"] for r in runs)
            lines.append(f"| {name} | {seconds:.0f} | {speed} | {size} |")
    if "throughput" in results:
        t = results["throughput"]
        sps = t["samples_per_s"]
        lines += [
            "",
            f"Throughput: {t['train_rows']:,} training rows, {t['epochs']} epoch(s), "
            f"batch {t['batch_size']}, median of {len(t['repeats']['fit'])} repeat(s).",
            "",
            "| loop | samples/s | fit / this |",
            "|---|---|---|",
            f"| fit (training.fit.fit) | {sps['fit']:,.0f} | 1.00x |",
            f"| bare loop, device tensors | {sps['bare']:,.0f} | **{t['fit_over_bare']:.2f}x** "
            f"(goal ≥ {t['goal_fit_over_bare']}) |",
            f"| per-sample Dataset + DataLoader | {sps['dataloader']:,.0f} "
            f"| {t['fit_over_dataloader']:.2f}x |",
        ]
    if "ensemble" in results:
        e = results["ensemble"]
        lines += [
            "",
            f"The ensemble's training step: {e['members']} members, batch {e['batch_size']}, "
            f"{e['steps']} steps of the bare loop, median of {e['rounds']} interleaved rounds.",
            "",
            "| step | samples/s | / before |",
            "|---|---|---|",
        ]
        for name, speed in e["samples_per_s"].items():
            lines.append(f"| {name} | {speed:,.0f} | **{e['over_before'][name]:.2f}x** |")
    if "tuning" in results:
        t = results["tuning"]
        lines += [
            "",
            f"Tuning: {t['trials']} trials of at most {t['max_epochs']} epochs, TPE seed 0.",
            "",
            "| pruner | trials/min | epochs trained | pruned | best valid loss |",
            "|---|---|---|---|---|",
        ]
        for name, study in t["studies"].items():
            lines.append(
                f"| {name} | {study['trials_per_minute']:.2f} | {study['epochs_trained']} "
                f"| {study['counts']['pruned']} | {study['best_valid_loss']:.4f} |"
            )
        lines.append(
            f"| hyperband / none | **{t['speedup']:.2f}x** | | | {t['best_valid_loss_ratio']:.4f} |"
        )
    if "selection" in results:
        sel = results["selection"]
        lines += [
            "",
            f"Model selection, the mean of {sel['seeds']} seed(s): the backtest scores each "
            "protocol one month earlier "
            "(labelled Jan–Sep, scored on October), the final run on labelled Jan–Oct, scored "
            "once on Nov–Dec.",
            "",
            "| protocol | backtest ROC-AUC (Oct) | final ROC-AUC (Nov–Dec) | by seed "
            "| final log loss | epochs (final) | fit s (final) |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, final in sel["final"].items():
            backtest = sel["backtest"][name]
            seeds = ", ".join(f"{run['roc_auc']:.4f}" for run in final["seeds"])
            lines.append(
                f"| {name} | {backtest['roc_auc']:.4f} | {final['roc_auc']:.4f} | {seeds} "
                f"| {final['log_loss']:.4f} | {final['epochs']:.1f} "
                f"| {final['fit_seconds']:.0f} |"
            )
        lines.append(f"\nChosen by the backtest: **{sel['chosen']}**.")
    return lines


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated")
    parser.add_argument("--home", type=Path, help="an MLOPS_HOME that has the feature table")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mlops-bench/training"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/training.json")
    parser.add_argument("--max-train-rows", type=int, help="a random subset, for smoke runs")
    parser.add_argument("--device", help="default: CUDA when present, else the CPU")
    parser.add_argument("--seeds", type=int, default=1, help="network seeds to ensemble")
    parser.add_argument("--epochs", type=int, help="default: Settings().fit.epochs")
    parser.add_argument("--batch-size", type=int, help="default: Settings().fit.batch_size")
    parser.add_argument("--width", type=int)
    parser.add_argument("--depth", type=int)
    parser.add_argument("--numeric-embedding", choices=["none", "ple", "periodic"])
    parser.add_argument("--lgbm-trials", type=int, default=30, help="the trees' study's budget")
    parser.add_argument(
        "--validation",
        choices=["auto", "random", "month"],
        help="the quality section's validation split; default: Settings().validation",
    )
    parser.add_argument("--throughput-epochs", type=int, default=2)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="throughput runs per variant")
    parser.add_argument("--ensemble-steps", type=int, default=60, help="steps per variant")
    parser.add_argument("--tune-trials", type=int, default=12, help="each study's budget")
    parser.add_argument("--tune-epochs", type=int, default=4, help="the most epochs a trial")
    args = parser.parse_args()
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    return args


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console)]
    )
    args = parse_args()
    device = torch.device(args.device) if args.device else pick_device()
    model_config, fit_config = configs(args)
    home = prepare_home(args)
    spec, tables = load_tables(home, args.max_train_rows)

    results: dict = {
        "environment": environment(device),
        "home": str(home),
        "max_train_rows": args.max_train_rows,
        "model": model_config.as_params(),
        "fit": fit_config.as_params(),
    }
    args.tuning_home = home
    sections = {
        "quality": quality_section,
        "throughput": throughput_section,
        "ensemble": ensemble_section,
        "tuning": tuning_section,
        "selection": selection_section,
    }
    for name in args.sections:
        start = time.perf_counter()
        results[name] = sections[name](args, spec, tables, model_config, fit_config, device)
        logger.info("%s section done in %.0f s", name, _since(start))

    results["environment"]["load_average_at_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    logger.info("wrote %s", args.out)
    console.print()
    for line in markdown(results):
        console.print(line, markup=False)


if __name__ == "__main__":
    main()
