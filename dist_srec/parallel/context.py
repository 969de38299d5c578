"""Where a training loop runs: rank, world size, device. The same loop runs alone or under Ray Train.

A loop takes a `TrainContext` instead of reading the environment, wraps its model with `ctx.wrap`
(DDP when world_size > 1), lets only `ctx.is_main` write files, and uses `ctx.agree` for any decision
that must be the same on every rank (early stopping, time budgets).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized()


@dataclass
class TrainContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    local_rank: int = 0
    """Rank among the processes of this machine (`LOCAL_RANK`, set by torchrun and Ray Train)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str | torch.device | None = None) -> TrainContext:
        """From an initialised process group (Ray Train, torchrun) if any, else a single process.

        Device: `device` if given, else cuda:<local rank> when CUDA is available, else cpu.
        """
        rank, world = (dist.get_rank(), dist.get_world_size()) if _dist_on() else (0, 1)
        local = int(os.environ.get("LOCAL_RANK", rank)) if world > 1 else 0
        return cls(rank=rank, world_size=world, device=resolve_device(device), local_rank=local)

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP over the process group when world_size > 1 (gloo on CPU, nccl on GPU), else the model."""
        if self.world_size <= 1:
            return model
        if not _dist_on():
            raise RuntimeError(f"world_size={self.world_size} but torch.distributed is not initialised")
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def agree(self, flag: bool) -> bool:
        """True on every rank if it is True on any rank (all_reduce max)."""
        if self.world_size <= 1 or not _dist_on():
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        if self.world_size > 1 and _dist_on():
            dist.barrier()

    def local_first(self, fn: Callable[[], T]) -> T:
        """`fn()` on local rank 0 of each machine, then (after a barrier) on the other ranks: for
        idempotent set-up that writes a machine-local cache (building or converting a model copy)."""
        out = fn() if self.local_rank == 0 else None
        self.barrier()
        return fn() if self.local_rank != 0 else out  # type: ignore[return-value]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device`, where None or "auto" is this process's CUDA device when there is one, else the CPU."""
    if device is None or device == "auto":
        return (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
    return torch.device(device)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
