"""The fit loop: device-resident batches, bf16 autocast where the device has it natively,
early stopping, fixed seeds."""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipelines.spec import FeatureSpec
from training import distributed
from training.config import FitConfig, ModelConfig
from training.model import TabularNet
from training.tensors import Tensors

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    train_loss: float
    valid_loss: float
    seconds: float
    samples_per_s: float


@dataclass
class FitResult:
    best_epoch: int
    best_valid_loss: float
    history: list[EpochResult] = field(default_factory=list)
    stopped_early: bool = False

    def record(self, epoch: EpochResult, patience: int) -> bool:
        """Early stopping's bookkeeping, the same in every framework's fit loop: the epoch
        appended; True when its validation loss is the best yet (keep its weights), else
        `stopped_early` once `patience` epochs have passed without a better one."""
        self.history.append(epoch)
        if epoch.valid_loss < self.best_valid_loss:
            self.best_epoch, self.best_valid_loss = epoch.epoch, epoch.valid_loss
            return True
        self.stopped_early = epoch.epoch - self.best_epoch >= patience
        return False


OnEpoch = Callable[[EpochResult], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fresh_model(
    spec: FeatureSpec, config: ModelConfig, seed: int, device: torch.device | str
) -> TabularNet:
    """A new network whose initial weights depend on `seed` alone, not on what else drew from
    torch's generator first (without it, two runs of one configuration differ)."""
    seed_everything(seed)
    return TabularNet(spec, config).to(device)


def training_precision(device: torch.device, precision: str = "auto") -> str:
    """What `precision` ("auto", "bf16" or "fp32") trains in on `device`: bf16 or fp32.

    "auto" picks bf16 where the hardware computes it natively: a CUDA device that supports it,
    or a CPU with AVX512-BF16 or AMX, where oneDNN runs bf16 matmuls (the ensemble's step 1.4x
    fp32's on this project's 2-core machines, benchmarks/RESULTS.md); elsewhere the CPU would
    emulate bf16, slower than fp32. bf16 keeps fp32's range, so no loss scaling is needed."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    native = (
        getattr(torch.cpu, name, lambda: False)()
        for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )
    return "bf16" if device.type == "cpu" and any(native) else "fp32"


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The training step's autocast for `training_precision(device, precision)`."""
    bf16 = training_precision(device, precision) == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def _scoring_autocast(device: torch.device) -> torch.autocast:
    # bf16 on CUDA; fp32 on the CPU, as the ONNX export computes (the parity check)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def predict_logits(model: nn.Module, data: Tensors, batch_size: int = 65_536) -> torch.Tensor:
    model.eval()
    device = data.label.device
    out = []
    with _scoring_autocast(device):
        for start in range(0, len(data), batch_size):
            part = slice(start, start + batch_size)
            out.append(model(data.categorical[part], data.numerical[part]).float())
    return torch.cat(out) if out else torch.empty(0, device=device)


def training_loss(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """A batch's log loss: of its one logit per row, or of each ensemble member's, alike."""
    if logits.dim() == 2:  # [rows, members]: each member learns on its own loss
        label = label.unsqueeze(1).expand_as(logits)
    return nn.functional.binary_cross_entropy_with_logits(logits.float(), label)


def evaluate_loss(model: nn.Module, data: Tensors) -> float:
    return float(training_loss(predict_logits(model, data), data.label))


def fit(
    model: nn.Module,
    train: Tensors,
    valid: Tensors,
    config: FitConfig,
    on_epoch: OnEpoch | None = None,
    restore_best: bool = True,
) -> FitResult:
    """Train until the validation loss stops improving; the model ends on its best weights
    (`restore_best=False`: on the last epoch's, as a refit for a fixed number of epochs).

    Under torchrun every rank calls this with the same data and seed: the model is wrapped in
    DDP, each rank steps through its own stride of the shared permutation, and rank 0's
    validation loss decides early stopping for all.
    """
    seed_everything(config.seed)
    device = train.label.device
    ranks, rank = distributed.world_size(), distributed.rank()
    net = model
    if ranks > 1:
        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    usable = len(train) // ranks * ranks  # the same number of steps on every rank
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    generator = torch.Generator(device=device).manual_seed(config.seed)
    result = FitResult(best_epoch=-1, best_valid_loss=float("inf"))
    best_state = copy.deepcopy(model.state_dict())
    precision = training_precision(device, config.precision)  # once, not per step
    for epoch in range(config.epochs):
        clock = _Clock(device)
        model.train()
        order = torch.randperm(len(train), device=device, generator=generator)
        order = order[rank:usable:ranks]
        total = torch.zeros((), device=device)
        for begin in range(0, len(order), config.batch_size):
            batch = train.take(order[begin : begin + config.batch_size])
            with autocast(device, precision):
                logits = net(batch.categorical, batch.numerical)
            loss = training_loss(logits, batch.label)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(batch)  # no host sync inside the loop
        seconds = clock.seconds()
        valid_loss = distributed.broadcast_float(evaluate_loss(model, valid), device)
        train_loss = float(distributed.all_reduce_sum(total)) / usable
        epoch_result = EpochResult(epoch, train_loss, valid_loss, seconds, usable / seconds)
        improved = result.record(epoch_result, config.patience)
        if on_epoch:
            on_epoch(epoch_result)
        if improved:
            best_state = copy.deepcopy(model.state_dict())
        elif result.stopped_early:
            break
    if restore_best:
        model.load_state_dict(best_state)
    return result


class _Clock:
    """Wall time of an epoch, synchronizing CUDA so queued kernels are counted."""

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._start = time.perf_counter()

    def seconds(self) -> float:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        return max(time.perf_counter() - self._start, 1e-9)
