"""What a training run tells its user while it runs: one grep-able line every `log_every_steps` steps
when the output is not a terminal (a Ray job log, a pod log, a file: tqdm's `\\r` redraws would make one
growing line there), the host or GPU memory, and metrics averaged over ranks.

    [llm-srec] step=40/302 epoch=1/10 loss=1.2345 retrieval=1.1000 ... samples/s=0.82 tokens/s=386
               lr=1.0e-04 mem=3.10GB eta=1h02m
"""

from __future__ import annotations

import math
import resource
import sys
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist

from dist_srec.parallel.context import TrainContext

NOT_LOSS_TERMS = {"train_positions"}
"""Step logs that are counts, not loss terms (the teacher's supervised positions per step)."""


def interactive() -> bool:
    """True when progress bars can redraw: stderr (tqdm's stream) is a terminal."""
    return sys.stderr.isatty()


def peak_memory_gb(device: torch.device) -> float:
    """This process's peak: GPU memory allocated on CUDA, else host RSS (Linux `ru_maxrss`)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def mean_over_ranks(metrics: Mapping[str, float], ctx: TrainContext) -> dict[str, float]:
    """Each metric averaged over ranks (losses of the global batch; rates are already global). Every
    rank must call it at the same point (one all-gather)."""
    mine = {k: float(v) for k, v in metrics.items()}
    if ctx.world_size <= 1 or not dist.is_initialized():
        return mine
    got: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(got, mine)
    keys = [k for k in got[0] if all(k in g for g in got)]
    return {k: sum(g[k] for g in got) / len(got) for k in keys}


def _duration(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def progress_line(
    name: str, metrics: Mapping[str, float], *, total_steps: int, epochs: int, eta_s: float, memory_gb: float
) -> str:
    """One line of key=value fields (see the module docstring); `metrics` holds step, epoch, lr, the
    `train_*` means and the rates."""
    step, epoch = int(metrics["step"]), int(metrics["epoch"])
    terms = " ".join(f"{k[len('train_') :]}={v:.4f}" for k, v in metrics.items()
                     if k.startswith("train_") and k not in NOT_LOSS_TERMS)  # fmt: skip
    rates = f"samples/s={metrics.get('samples_per_s', 0.0):.2f}"
    if "tokens_per_s" in metrics:
        rates += f" tokens/s={metrics['tokens_per_s']:.0f}"
    return (f"[{name}] step={step}/{total_steps} epoch={epoch + 1}/{epochs} {terms} {rates} "
            f"lr={metrics.get('lr', 0.0):.1e} mem={memory_gb:.2f}GB eta={_duration(eta_s)}")  # fmt: skip
