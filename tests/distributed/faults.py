"""Fault injection for the Ray Train tests: an `on_report` callback that kills one worker process once."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from dist_srec.parallel.context import TrainContext


class KillOnce:
    """SIGKILL rank `rank` right after the checkpoint report of step `step`, the first time only (a
    marker file survives the restart, so the restarted worker group runs through)."""

    def __init__(self, marker: str | Path, rank: int = 1, step: int = 3):
        self.marker, self.rank, self.step = str(marker), rank, step

    def __call__(self, metrics: dict[str, float], ctx: TrainContext) -> None:
        is_checkpoint = "train_loss" not in metrics
        due = ctx.rank == self.rank and int(metrics["step"]) == self.step and is_checkpoint
        if due and not Path(self.marker).exists():
            Path(self.marker).write_text(f"killed rank {ctx.rank} pid {os.getpid()} at step {self.step}\n")
            os.kill(os.getpid(), signal.SIGKILL)
