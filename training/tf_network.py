"""The network in TensorFlow: the PyTorch network's architecture (training/model.py) written as
`tf.Module`s, fit with torch's AdamW update, exported to ONNX with tf2onnx, as a candidate
(`training.export.Candidate`).

As with the JAX network (training/jax_network.py), one `ModelConfig` and one `FitConfig`
describe it, so the study's space, the settings and the gate are shared; only the framework
that runs the arithmetic differs. The layers mirror the PyTorch ones: an embedding per
categorical column, numerical values clipped to the training range and normalized with the
spec's statistics (numpy arrays that each trace turns into constants, so the ONNX file carries
the preprocessing), then piecewise-linear or periodic embeddings, an MLP or ResNet-style
backbone, and one head or a TabM-mini ensemble whose prediction is the members' mean
probability. Every linear layer starts as PyTorch's does, weight and bias uniform in
±1/sqrt(fan_in), and embeddings as N(0, 1).

Plain `tf.Module`s, not Keras layers: tf2onnx converts a `tf.function` with an input signature
whatever built it, the weights are plain variables (a frozen copy is exported), and nothing
depends on Keras 3's backend setting. The optimizer is written out (`AdamW`): Keras' adds
epsilon to sqrt(v) before the bias correction (the paper's "epsilon hat"), torch's and optax's
after it.

The fit loop is the PyTorch one's (training/fit.py): the table as tensors, a seeded permutation
per epoch, AdamW, early stopping on the validation loss with the best weights kept, one
`EpochResult` per epoch. Each step is one `tf.function` graph (XLA was slower on the CPU).
The graph takes the contract's int64 codes as they are. The `tf` extra.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import tensorflow as tf

from pipelines.contract import INPUTS, OUTPUT
from pipelines.spec import FeatureSpec, Part
from training.config import FitConfig, ModelConfig
from training.fit import EpochResult, FitResult

logger = logging.getLogger(__name__)

ONNX_OPSET = 18  # what onnxruntime 1.18, the serving extra's floor, runs
PREDICT_BATCH = 65_536
OnEpoch = Callable[[EpochResult], None]


class Linear(tf.Module):
    """x W + b, both drawn as PyTorch draws them: uniform in ±1/sqrt(fan_in) (Kaiming-uniform
    with a=sqrt(5) for the weight, the same bound for the bias)."""

    def __init__(self, inputs: int, outputs: int, init: tf.random.Generator) -> None:
        super().__init__()
        bound = 1 / math.sqrt(inputs)
        self.kernel = tf.Variable(init.uniform((inputs, outputs), -bound, bound), name="kernel")
        self.bias = tf.Variable(init.uniform((outputs,), -bound, bound), name="bias")

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        return tf.matmul(x, self.kernel) + self.bias


class LayerNorm(tf.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.scale = tf.Variable(tf.ones((width,)), name="scale")
        self.offset = tf.Variable(tf.zeros((width,)), name="offset")

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
        return (x - mean) * tf.math.rsqrt(variance + 1e-5) * self.scale + self.offset  # torch's


class Dropout(tf.Module):
    """Inverted dropout drawn from a seeded generator (a fit's masks depend on its seed only)."""

    def __init__(self, rate: float, seed: int) -> None:
        super().__init__()
        self.rate = rate
        self.rng = tf.random.Generator.from_seed(seed)

    def __call__(self, x: tf.Tensor, training: bool) -> tf.Tensor:
        if not training or self.rate == 0:
            return x
        keep = self.rng.uniform(tf.shape(x)) >= self.rate
        return x * tf.cast(keep, x.dtype) / (1 - self.rate)


class PiecewiseLinear(tf.Module):
    """Each raw value -> how far it has filled each quantile bin (0..1), then a linear map."""

    def __init__(self, edges: list[list[float]], dim: int, init: tf.random.Generator) -> None:
        super().__init__()
        bins = max(len(e) - 1 for e in edges)
        self.lo = np.zeros((len(edges), bins), dtype="float32")
        self.width = np.ones((len(edges), bins), dtype="float32")
        self.used = np.zeros((len(edges), bins), dtype="float32")  # 0: a shorter column's pad
        for j, column in enumerate(edges):
            for b in range(len(column) - 1):
                self.lo[j, b] = column[b]
                self.width[j, b] = max(column[b + 1] - column[b], 1e-9)
                self.used[j, b] = 1
        self.weight = tf.Variable(init.normal((len(edges), bins, dim)) / math.sqrt(bins))
        self.bias = tf.Variable(tf.zeros((len(edges), dim)))

    def __call__(self, raw: tf.Tensor) -> tf.Tensor:
        fill = tf.clip_by_value((raw[..., None] - self.lo) / self.width, 0, 1) * self.used
        return tf.nn.relu(tf.einsum("nfb,fbd->nfd", fill, self.weight) + self.bias)


class Periodic(tf.Module):
    """Each normalized value -> sin and cos of learned frequencies, then a linear map."""

    def __init__(
        self, features: int, frequencies: int, sigma: float, dim: int, init: tf.random.Generator
    ) -> None:
        super().__init__()
        self.frequencies = tf.Variable(init.normal((features, frequencies)) * sigma)
        scale = 1 / math.sqrt(2 * frequencies)
        self.weight = tf.Variable(init.normal((features, 2 * frequencies, dim)) * scale)
        self.bias = tf.Variable(tf.zeros((features, dim)))

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        angle = 2 * math.pi * self.frequencies * x[..., None]
        waves = tf.concat([tf.sin(angle), tf.cos(angle)], axis=-1)
        return tf.nn.relu(tf.einsum("nfk,fkd->nfd", waves, self.weight) + self.bias)


class ResidualBlock(tf.Module):
    def __init__(self, width: int, dropout: Dropout, init: tf.random.Generator) -> None:
        super().__init__()
        self.norm = LayerNorm(width)
        self.up = Linear(width, 2 * width, init)
        self.down = Linear(2 * width, width, init)
        self.dropout = dropout

    def __call__(self, x: tf.Tensor, training: bool) -> tf.Tensor:
        hidden = self.dropout(gelu(self.up(self.norm(x))), training)
        return x + self.dropout(self.down(hidden), training)


class TfTabularNet(tf.Module):
    """(category codes, raw numerical values) -> the logit of a delay; in training mode an
    ensemble returns each member's logit ([rows, members])."""

    def __init__(self, spec: FeatureSpec, config: ModelConfig, seed: int) -> None:
        super().__init__()
        self.config = config
        init = tf.random.Generator.from_seed(seed)
        self.embeddings = [
            tf.Variable(init.normal((f.cardinality, config.categorical_width(f.cardinality))))
            for f in spec.categorical
        ]
        numerical = spec.numerical
        # numpy, not tf.constant: a tensor made outside a trace is captured as an input of the
        # graph, and tf2onnx would make it one of the ONNX file's inputs
        self.mean = np.array([f.mean for f in numerical], dtype="float32")
        self.std = np.array([f.std for f in numerical], dtype="float32")
        self.low = np.array([min(f.min, f.max) for f in numerical], dtype="float32")
        self.high = np.array([max(f.min, f.max) for f in numerical], dtype="float32")
        self.numeric: PiecewiseLinear | Periodic | None = None
        numeric_width = len(numerical)
        if config.numeric_embedding == "ple":
            edges = [sorted(set(f.quantiles)) or [0.0, 1.0] for f in numerical]
            self.numeric = PiecewiseLinear(edges, config.numeric_dim, init)
            numeric_width = len(numerical) * config.numeric_dim
        elif config.numeric_embedding == "periodic":
            self.numeric = Periodic(
                len(numerical),
                config.periodic_frequencies,
                config.periodic_sigma,
                config.numeric_dim,
                init,
            )
            numeric_width = len(numerical) * config.numeric_dim
        self.inputs = sum(e.shape[1] for e in self.embeddings) + numeric_width
        self.dropout = Dropout(config.dropout, seed + 1)
        resnet = config.backbone == "resnet"
        # the backbone's first layer (the ResNet's stem), apart: an ensemble folds its signs in
        self.first = Linear(self.inputs, config.width, init)
        self.layers = [
            Linear(config.width, config.width, init)
            for _ in range(0 if resnet else config.depth - 1)
        ]
        self.blocks = [
            ResidualBlock(config.width, self.dropout, init)
            for _ in range(config.depth if resnet else 0)
        ]
        self.final_norm = LayerNorm(config.width) if resnet else None
        if config.members == 1:
            self.head = Linear(config.width, 1, init)
        else:  # TabM-mini, as training/model.py
            signs = init.uniform((config.members, self.inputs), 0, 2, dtype=tf.int32) * 2 - 1
            self.adapter = tf.Variable(tf.cast(signs, tf.float32))
            scale = 1 / math.sqrt(config.width)
            self.member_head = tf.Variable(init.normal((config.members, config.width)) * scale)
            self.member_bias = tf.Variable(tf.zeros((config.members,)))

    def __call__(self, categorical: tf.Tensor, numerical: tf.Tensor, training: bool) -> tf.Tensor:
        inputs = self.embed(categorical, numerical)
        members, width = self.config.members, self.config.width
        if members == 1:
            return self.head(self.backbone(self.first(inputs), training))[:, 0]
        # each member's input times the first layer: (x * r_k) W = x (r_k * W), one matmul for
        # all members, without their [rows * members, inputs] copies of the input
        kernel = tf.transpose(self.adapter[:, :, None] * self.first.kernel, [1, 0, 2])
        hidden = tf.matmul(inputs, tf.reshape(kernel, [self.inputs, members * width]))
        hidden = tf.reshape(hidden + tf.tile(self.first.bias, [members]), [-1, width])
        hidden = tf.reshape(self.backbone(hidden, training), [-1, members, width])
        logits = tf.reduce_sum(hidden * self.member_head, -1) + self.member_bias
        if training:
            return logits  # each member learns on its own loss
        return mean_probability_logit(logits)

    def embed(self, categorical: tf.Tensor, numerical: tf.Tensor) -> tf.Tensor:
        """The backbone's input: every column embedded (or normalized), side by side."""
        parts = [tf.gather(table, categorical[:, j]) for j, table in enumerate(self.embeddings)]
        if self.config.clip_to_training:
            numerical = tf.minimum(tf.maximum(numerical, self.low), self.high)
        normalized = (numerical - self.mean) / self.std
        if isinstance(self.numeric, PiecewiseLinear):
            parts.append(_flatten(self.numeric(numerical)))  # bins are in raw units
        elif self.numeric is not None:
            parts.append(_flatten(self.numeric(normalized)))
        else:
            parts.append(normalized)
        return tf.concat(parts, axis=1)

    def backbone(self, x: tf.Tensor, training: bool) -> tf.Tensor:
        """The backbone after its first layer."""
        if self.final_norm is not None:
            for block in self.blocks:
                x = block(x, training)
            return tf.nn.relu(self.final_norm(x))
        x = self.dropout(tf.nn.relu(x), training)
        for layer in self.layers:
            x = self.dropout(tf.nn.relu(layer(x)), training)
        return x


def gelu(x: tf.Tensor) -> tf.Tensor:
    """The exact GELU, as torch's: `tf.nn.gelu` computes it with Erfc, which ONNX lacks."""
    return 0.5 * x * (1 + tf.math.erf(x / math.sqrt(2)))


def _flatten(x: tf.Tensor) -> tf.Tensor:
    """[rows, features, dim] -> [rows, features * dim] (the row count may be symbolic)."""
    return tf.reshape(x, [-1, x.shape[1] * x.shape[2]])


def mean_probability_logit(logits: tf.Tensor) -> tf.Tensor:
    """[rows, members] logits -> the logit of the members' mean probability (in log space)."""
    log_p = tf.math.log_sigmoid(logits)
    log_q = tf.math.log_sigmoid(-logits)
    return tf.reduce_logsumexp(log_p, axis=1) - tf.reduce_logsumexp(log_q, axis=1)


def _signature(categorical: int, numerical: int) -> list[tf.TensorSpec]:
    """The contract's inputs with a dynamic batch axis."""
    return [
        tf.TensorSpec([None, categorical], tf.int64, name=INPUTS[0]),
        tf.TensorSpec([None, numerical], tf.float32, name=INPUTS[1]),
    ]


class TfNetwork:
    """A fitted TensorFlow network, scored in eval mode as its export is."""

    framework = "tf"

    def __init__(self, model: TfTabularNet, categorical: int, numerical: int) -> None:
        self.model = model
        self.signature = _signature(categorical, numerical)
        self._logits = tf.function(
            lambda c, n: model(c, n, training=False), input_signature=self.signature
        )

    def predict(self, categorical: np.ndarray, numerical: np.ndarray) -> np.ndarray:
        return tf.sigmoid(self.logits(categorical, numerical)).numpy().astype("float32")

    def logits(self, categorical: np.ndarray, numerical: np.ndarray) -> tf.Tensor:
        parts = [
            self._logits(
                tf.constant(categorical[i : i + PREDICT_BATCH], dtype=tf.int64),
                tf.constant(numerical[i : i + PREDICT_BATCH], dtype=tf.float32),
            )
            for i in range(0, len(categorical), PREDICT_BATCH)
        ]
        return tf.concat(parts, axis=0) if parts else tf.zeros((0,))

    def export_onnx(self, categorical: np.ndarray, numerical: np.ndarray, path: Path) -> Path:
        """The eval-mode network converted by tf2onnx (its weights frozen into the file), the
        output and the batch axis renamed to the contract's."""
        import tf2onnx

        model = self.model

        def probability(categorical: tf.Tensor, numerical: tf.Tensor) -> tf.Tensor:
            return tf.sigmoid(model(categorical, numerical, training=False))

        converted, _ = tf2onnx.convert.from_function(
            tf.function(probability), input_signature=self.signature, opset=ONNX_OPSET
        )
        converted = _on_contract(converted)
        onnx.checker.check_model(converted, full_check=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(converted, str(path))
        return path


def _on_contract(converted: onnx.ModelProto) -> onnx.ModelProto:
    """tf2onnx's graph with its one output named `delay_probability` (tf2onnx names it after
    the TensorFlow tensor, `Identity:0`) and every batch axis named `batch`."""
    graph = converted.graph
    (output,) = graph.output
    old = output.name
    for node in graph.node:
        node.output[:] = [OUTPUT if name == old else name for name in node.output]
        node.input[:] = [OUTPUT if name == old else name for name in node.input]
    output.name = OUTPUT
    for tensor in [*graph.input, *graph.output]:
        tensor.type.tensor_type.shape.dim[0].dim_param = "batch"
    return converted


def fresh_tf_model(spec: FeatureSpec, config: ModelConfig, seed: int) -> TfTabularNet:
    """A new network whose initial weights depend on `seed` alone."""
    return TfTabularNet(spec, config, seed)


class AdamW(tf.Module):
    """torch.optim.AdamW's update: the weights decayed by lr * weight_decay, then Adam's step
    with epsilon added to the bias-corrected sqrt(v) (betas 0.9, 0.999; epsilon 1e-8)."""

    def __init__(
        self, params: Sequence[tf.Variable], learning_rate: float, weight_decay: float
    ) -> None:
        super().__init__()
        self.params = list(params)
        self.learning_rate, self.weight_decay = learning_rate, weight_decay
        self.beta1, self.beta2, self.eps = 0.9, 0.999, 1e-8
        self.m = [tf.Variable(tf.zeros_like(p), trainable=False) for p in self.params]
        self.v = [tf.Variable(tf.zeros_like(p), trainable=False) for p in self.params]
        self.step = tf.Variable(0.0, trainable=False)

    def apply(self, grads: Sequence[tf.Tensor | tf.IndexedSlices]) -> None:
        self.step.assign_add(1.0)
        lr = self.learning_rate
        first = 1 - self.beta1**self.step
        root_second = tf.sqrt(1 - self.beta2**self.step)
        for param, m, v, grad in zip(self.params, self.m, self.v, grads, strict=True):
            grad = tf.convert_to_tensor(grad)  # an embedding's, as torch's: dense
            param.assign(param * (1 - lr * self.weight_decay))
            m.assign(self.beta1 * m + (1 - self.beta1) * grad)
            v.assign(self.beta2 * v + (1 - self.beta2) * tf.square(grad))
            param.assign_sub(lr / first * m / (tf.sqrt(v) / root_second + self.eps))


def _loss(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    if logits.shape.rank == 2:  # an ensemble's members, each on its own loss
        labels = tf.broadcast_to(labels[:, None], tf.shape(logits))
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels, logits))


def fit_tf(
    spec: FeatureSpec,
    model_config: ModelConfig,
    train: Part,
    valid: Part,
    config: FitConfig,
    on_epoch: OnEpoch | None = None,
) -> tuple[TfNetwork, FitResult]:
    """Train until the validation loss stops improving; the network ends on its best weights."""
    model = fresh_tf_model(spec, model_config, config.seed)
    params = model.trainable_variables
    optimizer = AdamW(params, config.learning_rate, config.weight_decay)
    codes, values, labels = (
        tf.constant(train[0], dtype=tf.int64),
        tf.constant(train[1], dtype=tf.float32),
        tf.constant(train[2], dtype=tf.float32),
    )

    # a graph, not XLA: for the 8-member default on this project's 2-core CPUs the graph's
    # oneDNN kernels ran 26k samples/s, XLA's 17k (20k rows, a batch of 2,048; one run each)
    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32)])
    def train_step(index: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            logits = model(tf.gather(codes, index), tf.gather(values, index), training=True)
            loss = _loss(logits, tf.gather(labels, index))
        optimizer.apply(tape.gradient(loss, params))
        return loss

    network = TfNetwork(model, train[0].shape[1], train[1].shape[1])
    valid_labels = tf.constant(valid[2], dtype=tf.float32)
    rng = np.random.default_rng(config.seed)
    result = FitResult(best_epoch=-1, best_valid_loss=float("inf"))
    best = [tf.identity(p) for p in params]
    rows = len(train[2])
    for epoch in range(config.epochs):
        started = time.perf_counter()
        order = rng.permutation(rows)
        total = tf.zeros(())
        for begin in range(0, rows, config.batch_size):
            index = tf.constant(order[begin : begin + config.batch_size], dtype=tf.int32)
            total += train_step(index) * len(index)  # no host sync inside the loop
        train_loss = float(total) / rows
        seconds = max(time.perf_counter() - started, 1e-9)
        valid_loss = float(_loss(network.logits(valid[0], valid[1]), valid_labels))
        epoch_result = EpochResult(epoch, train_loss, valid_loss, seconds, rows / seconds)
        improved = result.record(epoch_result, config.patience)
        if on_epoch:
            on_epoch(epoch_result)
        if improved:
            best = [tf.identity(p) for p in params]
        elif result.stopped_early:
            break
    for param, value in zip(params, best, strict=True):
        param.assign(value)
    return network, result
