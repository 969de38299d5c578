"""Who does the backward pass and the optimizer step of the loop (`dist_srec.train.loop.Trainer`).

    per step:   stepper.backward(loss)   gradients of the trainable weights, averaged over ranks
                stepper.step()           one optimizer update
    per round:  stepper.param_groups     where the loop writes the decayed lr
    checkpoint: stepper.state_dict()     torch Adam's format over `task.trainable()` in order, with
                                         whole tensors, whoever steps (so a run resumes under another
                                         stepper: plain torch, DDP, or a DeepSpeed engine)

`TorchStepper` is the default: a torch optimizer, plus the task's `sync_grads` hook when the task
averages gradients itself. A task may return another one from `make_stepper(optimizer)`, e.g. a
DeepSpeed engine that owns the optimizer (`dist_srec.parallel.one_engine`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor


class Stepper(Protocol):
    """Backward, optimizer step and optimizer state of a training loop."""

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups (the loop sets their "lr")."""

    def backward(self, loss: Tensor) -> None:
        """Gradients of `loss` (a scalar) for the trainable weights, averaged over ranks."""

    def step(self) -> None:
        """Update the weights from the gradients, then clear the gradients."""

    def state_dict(self) -> dict[str, Any]:
        """The optimizer state in torch's format with whole tensors (every rank calls this)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a `state_dict()` of any stepper over the same trainable weights."""


class TorchStepper:
    """A torch optimizer; `sync` (if given) runs after each backward (e.g. an all-reduce of grads)."""

    def __init__(self, optimizer: torch.optim.Optimizer, sync: Callable[[], None] | None = None) -> None:
        self.optimizer, self.sync = optimizer, sync

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def backward(self, loss: Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.sync is not None:
            self.sync()

    def step(self) -> None:
        self.optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)
