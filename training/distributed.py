"""Data-parallel training with torch DDP, started by torchrun.

`torchrun --nproc_per_node N -m mlops train` starts N copies of the command; torchrun's
environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR) tells each which one it is. They join
one process group (NCCL on GPUs, gloo on CPUs), each trains on its own stride of every epoch's
permutation, DDP averages the gradients, and only rank 0 logs, exports and registers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


@contextmanager
def process_group() -> Iterator[int]:
    """Join torchrun's process group when started by it; yields this process's rank."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield rank()
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield dist.get_rank()
        dist.barrier()  # rank 0 may still be exporting; leave together
    finally:
        dist.destroy_process_group()


def broadcast_float(value: float, device: torch.device) -> float:
    """Rank 0's value on every rank, so that decisions such as early stopping agree."""
    if world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return float(tensor)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
