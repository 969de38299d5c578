"""What the one training loop (`dist_srec.train.loop`) is given and keeps: its config (`LoopConfig`), the
protocols of what it runs (`TrainTask`, `BatchLoader`, `Validate`, `Reporter`), its saved progress
(`TrainState`) and the per-step sampling RNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from dist_srec.config import check
from dist_srec.eval.metrics import empty_sums
from dist_srec.parallel.context import TrainContext
from dist_srec.train.metric_logging import BACKENDS


@dataclass(kw_only=True)
class LoopConfig:
    """Optimisation, validation and checkpoint cadence of a training run."""

    epochs: int = 1
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.98)
    lr_decay: float = 1.0
    """lr is multiplied by this after every validation round (LLM-SRec: 0.95)."""
    warmup_steps: int = 0
    """Step k < warmup_steps uses lr x (k + 1) / warmup_steps (linear warm-up; 0 = none, the reference)."""
    eval_every_steps: int = 0
    """Validate every this many steps (0 = at the end of every `eval_every_epochs` epochs)."""
    eval_every_epochs: int = 1
    patience: int = 5
    """Validation rounds without improvement before stopping early (0 = never)."""
    select_metric: str = "ndcg@10"
    max_steps: int = 0
    """Stop after this many optimizer steps in all (0 = no limit)."""
    time_budget_s: float = 0.0
    """Stop after the step in which this much training time is spent (0 = no budget); the end state
    is then validated once."""
    save_every_steps: int = 0
    """Also write `last` every this many steps (0 = only at validation rounds and epoch ends)."""
    log_every_steps: int = 10
    """Report metrics (and, when the output is not a terminal, print one progress line) every this many
    steps."""
    metric_loggers: tuple[str, ...] = ("jsonl", "tensorboard")
    """Where rank 0 logs metrics (`dist_srec.train.metric_logging`): jsonl, tensorboard, mlflow."""
    seed: int = 42
    resume: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        check(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        check(self.eval_every_epochs >= 1, "eval_every_epochs", f"must be >= 1, got {self.eval_every_epochs}")
        check(self.log_every_steps >= 1, "log_every_steps", f"must be >= 1, got {self.log_every_steps}")
        for name in ("eval_every_steps", "patience", "max_steps", "save_every_steps", "warmup_steps"):
            check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        check(math.isfinite(self.lr) and self.lr > 0, "lr", f"must be a finite number > 0, got {self.lr}")
        check(0 < self.lr_decay <= 1, "lr_decay", f"must be in (0, 1], got {self.lr_decay}")
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas", f"bad {self.betas}")
        check(self.time_budget_s >= 0, "time_budget_s", f"must be >= 0, got {self.time_budget_s}")
        self.metric_loggers = tuple(self.metric_loggers)
        bad = [b for b in self.metric_loggers if b not in BACKENDS]
        check(not bad, "metric_loggers", f"{bad} not among {list(BACKENDS)}")
        names = [k for k in empty_sums() if k != "count"]
        check(self.select_metric in names, "select_metric", f"'{self.select_metric}' is not one of {names}")


class BatchLoader(Protocol):
    """What the loop needs from a loader (`dist_srec.data.loader.ShardLoader` is one)."""

    def __iter__(self) -> Iterator[Mapping[str, Tensor]]: ...
    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class TrainTask(Protocol):
    """What is trained. `module` holds everything (frozen parts included); `trainable()` is optimised."""

    name: str
    module: nn.Module

    def setup(self, ctx: TrainContext) -> None:
        """Move to `ctx.device` and wrap for data parallelism (the loss must run through the wrapper)."""

    def trainable(self) -> list[nn.Parameter]: ...

    def loss(self, batch: Mapping[str, Tensor], gen: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        """Mean loss of this rank's batch, plus plain-number logs (loss terms, token counts)."""

    def state_dict(self) -> dict[str, Tensor]:
        """The weights a checkpoint holds."""

    def load_state_dict(self, state: dict[str, Tensor]) -> None: ...

    def config_json(self) -> dict[str, Any]:
        """config.json of a checkpoint: enough to rebuild and to check what it belongs to."""

    def check_checkpoint(self, config: Mapping[str, Any], path: Path) -> None:
        """Raise `CheckpointError` if a checkpoint with this config.json cannot resume this task."""


Validate = Callable[[Any], dict[str, float]]  # task (eval mode) -> metrics, identical on every rank


Reporter = Callable[[dict[str, float], "Path | None"], None]


@dataclass
class TrainState:
    """Progress, saved in `last/train_state.json`."""

    epoch: int = 0
    """The epoch in progress (0-based); complete epochs = epoch when `epoch_done`."""
    global_step: int = 0
    lr: float = 0.0
    best_metric: float = -math.inf
    best_step: int = -1
    bad_rounds: int = 0
    elapsed_s: float = 0.0
    samples: int = 0
    tokens: int = 0
    """Prompt tokens processed, summed over ranks (0 for tasks that do not count them)."""
    stopped: str = ""
    """Why training ended: "", "epochs", "max_steps", "early_stop", "time_budget"."""
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch_sums: dict[str, float] = field(default_factory=dict)
    """Sums of the step logs over the steps of the epoch in progress (its `train_*` means survive a
    mid-epoch resume)."""
    epoch_steps: int = 0


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The sampling RNG of one step: a function of (seed, rank, step) only, so resume replays it."""
    state = np.random.SeedSequence([seed, rank, step]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> 1))
