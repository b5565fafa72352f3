"""The network in JAX: the PyTorch network's architecture (training/model.py) written in Flax
NNX, fit with optax, exported to ONNX with jax2onnx, as a candidate (`training.export.Candidate`).

One `ModelConfig` and one `FitConfig` describe either network, so the study's search space,
the settings (`MLOPS_MODEL__*`, `MLOPS_FIT__*`) and the gate are the same for both; only the
framework that runs the arithmetic differs. The layers mirror the PyTorch ones: an embedding
per categorical column, numerical values clipped to the training range and normalized with the
spec's statistics (constants in the graph, so the ONNX file carries the preprocessing), then
piecewise-linear or periodic embeddings, an MLP or ResNet-style backbone, and one head or a
TabM-mini ensemble whose prediction is the members' mean probability. Linear layers start as
PyTorch's do (uniform, variance 1/(3 fan_in)), so a configuration tuned on one network is a
fair start for the other.

The fit loop is the PyTorch one's (training/fit.py): the table on the device, a seeded
permutation per epoch, AdamW, early stopping on the validation loss with the best weights
kept, one `EpochResult` per epoch. Each step is compiled by XLA (CUDA when jax finds a GPU).
JAX computes in 32 bits, so the graph takes int32 codes; the ONNX file is put on the contract
(int64 codes) by a Cast in front. The `jax` extra.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import optax
from flax import nnx
from onnx import TensorProto, helper

from pipelines.contract import INPUTS, OUTPUT
from pipelines.spec import FeatureSpec, Part
from training.config import FitConfig, ModelConfig
from training.fit import EpochResult, FitResult

logger = logging.getLogger(__name__)

ONNX_OPSET = 18  # what onnxruntime 1.18, the serving extra's floor, runs
PREDICT_BATCH = 65_536
OnEpoch = Callable[[EpochResult], None]


class Constant(nnx.Variable):
    """A value the network computes with but never trains (PyTorch's buffers)."""


def _torch_like() -> Callable:
    return nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def _linear(inputs: int, outputs: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(inputs, outputs, kernel_init=_torch_like(), rngs=rngs)


class PiecewiseLinear(nnx.Module):
    """Each raw value -> how far it has filled each quantile bin (0..1), then a linear map."""

    def __init__(self, edges: list[list[float]], dim: int, rngs: nnx.Rngs) -> None:
        bins = max(len(e) - 1 for e in edges)
        lo = np.zeros((len(edges), bins), dtype="float32")
        width = np.ones((len(edges), bins), dtype="float32")
        used = np.zeros((len(edges), bins), dtype=bool)
        for j, column in enumerate(edges):
            for b in range(len(column) - 1):
                lo[j, b] = column[b]
                width[j, b] = max(column[b + 1] - column[b], 1e-9)
                used[j, b] = True  # the others pad columns with fewer edges
        self.lo, self.width, self.used = Constant(lo), Constant(width), Constant(used)
        scale = 1 / math.sqrt(bins)
        self.weight = nnx.Param(jax.random.normal(rngs.params(), (len(edges), bins, dim)) * scale)
        self.bias = nnx.Param(jnp.zeros((len(edges), dim)))

    def __call__(self, raw: jax.Array) -> jax.Array:
        fill = jnp.clip((raw[..., None] - self.lo[...]) / self.width[...], 0, 1)
        fill = jnp.where(self.used[...], fill, 0.0)
        return jax.nn.relu(jnp.einsum("nfb,fbd->nfd", fill, self.weight[...]) + self.bias[...])


class Periodic(nnx.Module):
    """Each normalized value -> sin and cos of learned frequencies, then a linear map."""

    def __init__(
        self, features: int, frequencies: int, sigma: float, dim: int, rngs: nnx.Rngs
    ) -> None:
        self.frequencies = nnx.Param(
            jax.random.normal(rngs.params(), (features, frequencies)) * sigma
        )
        scale = 1 / math.sqrt(2 * frequencies)
        self.weight = nnx.Param(
            jax.random.normal(rngs.params(), (features, 2 * frequencies, dim)) * scale
        )
        self.bias = nnx.Param(jnp.zeros((features, dim)))

    def __call__(self, x: jax.Array) -> jax.Array:
        angle = 2 * math.pi * self.frequencies[...] * x[..., None]
        waves = jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)
        return jax.nn.relu(jnp.einsum("nfk,fkd->nfd", waves, self.weight[...]) + self.bias[...])


class ResidualBlock(nnx.Module):
    def __init__(self, width: int, dropout: float, rngs: nnx.Rngs) -> None:
        self.norm = nnx.LayerNorm(width, epsilon=1e-5, rngs=rngs)  # PyTorch's epsilon
        self.up = _linear(width, 2 * width, rngs)
        self.down = _linear(2 * width, width, rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = self.dropout(jax.nn.gelu(self.up(self.norm(x)), approximate=False))
        return x + self.dropout(self.down(hidden))


class JaxTabularNet(nnx.Module):
    """(category codes, raw numerical values) -> the logit of a delay; in training mode an
    ensemble returns each member's logit ([rows, members])."""

    def __init__(self, spec: FeatureSpec, config: ModelConfig, rngs: nnx.Rngs) -> None:
        self.config = config
        self.embeddings = nnx.List(
            nnx.Embed(f.cardinality, config.categorical_width(f.cardinality), rngs=rngs)
            for f in spec.categorical
        )
        numerical = spec.numerical
        self.mean = Constant(np.array([f.mean for f in numerical], dtype="float32"))
        self.std = Constant(np.array([f.std for f in numerical], dtype="float32"))
        self.low = Constant(np.array([min(f.min, f.max) for f in numerical], dtype="float32"))
        self.high = Constant(np.array([max(f.min, f.max) for f in numerical], dtype="float32"))
        # optional layers are `nnx.data` (a None would otherwise be a static attribute)
        numeric: PiecewiseLinear | Periodic | None = None
        numeric_width = len(numerical)
        if config.numeric_embedding == "ple":
            edges = [sorted(set(f.quantiles)) or [0.0, 1.0] for f in numerical]
            numeric = PiecewiseLinear(edges, config.numeric_dim, rngs)
            numeric_width = len(numerical) * config.numeric_dim
        elif config.numeric_embedding == "periodic":
            numeric = Periodic(
                len(numerical),
                config.periodic_frequencies,
                config.periodic_sigma,
                config.numeric_dim,
                rngs,
            )
            numeric_width = len(numerical) * config.numeric_dim
        self.numeric = nnx.data(numeric)
        inputs = sum(e.features for e in self.embeddings) + numeric_width
        resnet = config.backbone == "resnet"
        self.stem = nnx.data(_linear(inputs, config.width, rngs) if resnet else None)
        self.blocks = nnx.List(
            ResidualBlock(config.width, config.dropout, rngs)
            for _ in range(config.depth if resnet else 0)
        )
        self.final_norm = nnx.data(
            nnx.LayerNorm(config.width, epsilon=1e-5, rngs=rngs) if resnet else None
        )
        self.layers = nnx.List(
            _linear(inputs if i == 0 else config.width, config.width, rngs)
            for i in range(0 if resnet else config.depth)
        )
        self.dropout = nnx.Dropout(config.dropout, rngs=rngs)
        self.head = nnx.data(_linear(config.width, 1, rngs) if config.members == 1 else None)
        if config.members > 1:  # TabM-mini, as training/model.py
            signs = jax.random.randint(rngs.params(), (config.members, inputs), 0, 2) * 2 - 1
            self.adapter = nnx.Param(signs.astype("float32"))
            scale = 1 / math.sqrt(config.width)
            self.member_head = nnx.Param(
                jax.random.normal(rngs.params(), (config.members, config.width)) * scale
            )
            self.member_bias = nnx.Param(jnp.zeros(config.members))

    def backbone(self, x: jax.Array) -> jax.Array:
        if self.stem is not None:
            x = self.stem(x)
            for block in self.blocks:
                x = block(x)
            return jax.nn.relu(self.final_norm(x))
        for layer in self.layers:
            x = self.dropout(jax.nn.relu(layer(x)))
        return x

    def __call__(self, categorical: jax.Array, numerical: jax.Array) -> jax.Array:
        parts = [emb(categorical[:, j]) for j, emb in enumerate(self.embeddings)]
        if self.config.clip_to_training:
            numerical = jnp.minimum(jnp.maximum(numerical, self.low[...]), self.high[...])
        normalized = (numerical - self.mean[...]) / self.std[...]
        if isinstance(self.numeric, PiecewiseLinear):
            parts.append(_flatten(self.numeric(numerical)))  # bins are in raw units
        elif self.numeric is not None:
            parts.append(_flatten(self.numeric(normalized)))
        else:
            parts.append(normalized)
        inputs = jnp.concatenate(parts, axis=1)
        if self.head is not None:
            return self.head(self.backbone(inputs))[:, 0]
        members = self.config.members
        scaled = (inputs[:, None, :] * self.adapter[...]).reshape(-1, inputs.shape[1])
        hidden = self.backbone(scaled).reshape(-1, members, self.config.width)
        logits = (hidden * self.member_head[...]).sum(-1) + self.member_bias[...]
        if not self.dropout.deterministic:
            return logits  # training: each member learns on its own loss
        return mean_probability_logit(logits)


def _flatten(x: jax.Array) -> jax.Array:
    """[rows, features, dim] -> [rows, features * dim] (the row count may be symbolic)."""
    return x.reshape(-1, x.shape[1] * x.shape[2])


def mean_probability_logit(logits: jax.Array) -> jax.Array:
    """[rows, members] logits -> the logit of the members' mean probability (in log space)."""
    log_p = jax.nn.log_sigmoid(logits)
    log_q = jax.nn.log_sigmoid(-logits)
    return jax.nn.logsumexp(log_p, axis=1) - jax.nn.logsumexp(log_q, axis=1)


class JaxNetwork:
    """A fitted JAX network, scored in eval mode as its export is."""

    framework = "jax"

    def __init__(self, model: JaxTabularNet) -> None:
        self.model = model
        model.eval()
        self._logits = nnx.jit(lambda model, c, n: model(c, n))

    def predict(self, categorical: np.ndarray, numerical: np.ndarray) -> np.ndarray:
        return np.asarray(jax.nn.sigmoid(self.logits(categorical, numerical)), dtype="float32")

    def logits(self, categorical: np.ndarray, numerical: np.ndarray) -> jax.Array:
        self.model.eval()
        parts = [
            self._logits(
                self.model,
                jnp.asarray(categorical[i : i + PREDICT_BATCH], dtype="int32"),
                jnp.asarray(numerical[i : i + PREDICT_BATCH]),
            )
            for i in range(0, len(categorical), PREDICT_BATCH)
        ]
        return jnp.concatenate(parts) if parts else jnp.zeros(0)

    def export_onnx(self, categorical: np.ndarray, numerical: np.ndarray, path: Path) -> Path:
        """The eval-mode network traced by jax2onnx with a symbolic batch axis, behind a cast
        of the contract's int64 codes to the int32 the trace took."""
        from jax2onnx import to_onnx

        self.model.eval()

        def probability(codes: jax.Array, values: jax.Array) -> jax.Array:
            return jax.nn.sigmoid(self.model(codes, values))

        traced = to_onnx(
            probability,
            [
                jax.ShapeDtypeStruct(("batch", categorical.shape[1]), jnp.int32),
                jax.ShapeDtypeStruct(("batch", numerical.shape[1]), jnp.float32),
            ],
            model_name="jax",
            opset=ONNX_OPSET,
            input_names=["codes_int32", INPUTS[1]],
            output_names=[OUTPUT],
        )
        model = _on_contract(traced, categorical.shape[1])
        onnx.checker.check_model(model, full_check=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(path))
        return path


def _on_contract(traced: onnx.ModelProto, categorical: int) -> onnx.ModelProto:
    """The traced graph with the contract's int64 `categorical` input cast to its int32 one."""
    graph = traced.graph
    (codes,) = [i for i in graph.input if i.name == "codes_int32"]
    graph.input.remove(codes)
    graph.input.insert(
        0, helper.make_tensor_value_info(INPUTS[0], TensorProto.INT64, ["batch", categorical])
    )
    cast = helper.make_node("Cast", [INPUTS[0]], ["codes_int32"], to=TensorProto.INT32)
    graph.node.insert(0, cast)
    return traced


def fresh_jax_model(spec: FeatureSpec, config: ModelConfig, seed: int) -> JaxTabularNet:
    """A new network whose initial weights depend on `seed` alone."""
    return JaxTabularNet(spec, config, nnx.Rngs(params=seed, dropout=seed + 1))


def _loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    if logits.ndim == 2:  # an ensemble's members, each on its own loss
        labels = jnp.broadcast_to(labels[:, None], logits.shape)
    return optax.sigmoid_binary_cross_entropy(logits, labels).mean()


@nnx.jit
def _train_step(
    model: JaxTabularNet,
    optimizer: nnx.Optimizer,
    categorical: jax.Array,
    numerical: jax.Array,
    labels: jax.Array,
    index: jax.Array,
) -> jax.Array:
    def loss_of(model: JaxTabularNet) -> jax.Array:
        return _loss(model(categorical[index], numerical[index]), labels[index])

    loss, grads = nnx.value_and_grad(loss_of)(model)
    optimizer.update(model, grads)
    return loss


def fit_jax(
    spec: FeatureSpec,
    model_config: ModelConfig,
    train: Part,
    valid: Part,
    config: FitConfig,
    on_epoch: OnEpoch | None = None,
) -> tuple[JaxNetwork, FitResult]:
    """Train until the validation loss stops improving; the network ends on its best weights."""
    model = fresh_jax_model(spec, model_config, config.seed)
    optimizer = nnx.Optimizer(
        model,
        optax.adamw(config.learning_rate, weight_decay=config.weight_decay),
        wrt=nnx.Param,
    )
    codes, values, labels = (
        jnp.asarray(train[0], dtype="int32"),
        jnp.asarray(train[1]),
        jnp.asarray(train[2], dtype="float32"),
    )
    network = JaxNetwork(model)
    valid_labels = jnp.asarray(valid[2], dtype="float32")
    rng = np.random.default_rng(config.seed)
    result = FitResult(best_epoch=-1, best_valid_loss=float("inf"))
    best = nnx.clone(nnx.state(model))
    rows = len(train[2])
    for epoch in range(config.epochs):
        started = time.perf_counter()
        model.train()
        order = rng.permutation(rows)
        total = jnp.zeros(())
        for begin in range(0, rows, config.batch_size):
            index = jnp.asarray(order[begin : begin + config.batch_size], dtype="int32")
            loss = _train_step(model, optimizer, codes, values, labels, index)
            total = total + loss * len(index)  # no host sync inside the loop
        train_loss = float(total) / rows
        seconds = max(time.perf_counter() - started, 1e-9)
        valid_loss = float(_loss(network.logits(valid[0], valid[1]), valid_labels))
        epoch_result = EpochResult(epoch, train_loss, valid_loss, seconds, rows / seconds)
        improved = result.record(epoch_result, config.patience)
        if on_epoch:
            on_epoch(epoch_result)
        if improved:
            best = nnx.clone(nnx.state(model))
        elif result.stopped_early:
            break
    nnx.update(model, best)
    model.eval()
    return network, result
