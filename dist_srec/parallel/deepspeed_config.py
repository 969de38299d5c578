"""The DeepSpeed JSON of a run, generated from a typed config (never hand-written).

Stage 0 keeps a full copy of the LLM's weights on every rank; stage 3 partitions them, so each rank
holds about 1/W of the LM and all-gathers a layer's weights just before that layer runs (forward, and
again for the input-gradient backward). Two patterns (`DeepSpeedConfig.pattern`, see
`dist_srec.parallel.lm_engine`): "lm-engine", only the frozen LLM in an engine without optimizer, the heads
replicated and stepped by the loop's torch Adam; "one-engine", one engine over the LLM and the heads
that owns the optimizer (torch Adam over the heads only). The optimizer never sees the LM.

    settings that work on CPU (gloo) and GPU (nccl):
      zero_optimization.stage = 0 | 3, stage3_param_persistence_threshold = 0, overlap_comm = false
      zero_force_ds_cpu_optimizer = false     (a client torch optimizer is allowed)
      gradient_clipping = 0                   (the one engine steps like the loop's Adam: no clipping)
      bf16.enabled                            (= the LLM dtype unless set explicitly)

A user JSON (`override`) is deep-merged over the generated dict last, so any key can be changed.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dist_srec.errors import ConfigError


@dataclass(kw_only=True)
class DeepSpeedConfig:
    """How the frozen LLM is placed: ZeRO stage, bf16, and an optional user JSON override."""

    pattern: Literal["lm-engine", "one-engine"] = "lm-engine"
    """"lm-engine": the LLM alone in an engine, heads replicated, gradients averaged by the task and
    stepped by the loop's Adam; "one-engine": one engine over the LLM and the heads, DeepSpeed owns
    the Adam and averages and steps (`dist_srec.parallel.one_engine`)."""
    stage: Literal[0, 3] = 3
    """0: replicated weights (models that fit on one device); 3: weights partitioned over ranks."""
    bf16: bool | None = None
    """bf16 weights and activations; None follows `LLMConfig.dtype` (resolved on the worker's device)."""
    param_persistence_threshold: int = 0
    """Stage 3: parameters with fewer elements than this stay unpartitioned (0 = partition all)."""
    overlap_comm: bool = False
    """Stage 3: prefetch the next layer's all-gather during compute (off: gloo deadlocks seen on CPU)."""
    override: str | None = None
    """Path of a user DeepSpeed JSON deep-merged over the generated one (its keys win). Made absolute
    on construction; on a multi-node cluster it must be on storage every node sees."""

    def __post_init__(self) -> None:
        if self.pattern not in ("lm-engine", "one-engine"):
            raise ConfigError(
                f"config field 'pattern': must be 'lm-engine' or 'one-engine', got {self.pattern!r}"
            )
        if self.stage not in (0, 3):
            raise ConfigError(f"config field 'stage': must be 0 or 3, got {self.stage!r}")
        if self.param_persistence_threshold < 0:
            raise ConfigError(
                f"config field 'param_persistence_threshold': must be >= 0, got {self.param_persistence_threshold}"
            )
        if self.override is not None:
            if not Path(self.override).is_file():
                raise ConfigError(f"config field 'override': DeepSpeed JSON {self.override} does not exist")
            # Ray Train workers run in their own working directories: a relative path would not resolve.
            self.override = str(Path(self.override).resolve())


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `over` merged in, recursively for nested dicts (`over` wins)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def deepspeed_dict(cfg: DeepSpeedConfig, *, micro_batch: int, bf16: bool) -> dict[str, Any]:
    """The DeepSpeed config dict for the LLM engine.

    Args:
        cfg: the typed settings.
        micro_batch: samples per rank and step (DeepSpeed requires the batch keys even without an
            optimizer; the loop, not DeepSpeed, steps the heads).
        bf16: the LLM's resolved dtype is bf16 (used when `cfg.bf16` is None).
    """
    zero: dict[str, Any] = {"stage": cfg.stage}
    if cfg.stage == 3:
        zero |= {
            "stage3_param_persistence_threshold": cfg.param_persistence_threshold,
            "overlap_comm": cfg.overlap_comm,
            "contiguous_gradients": False,  # no LM gradients exist
        }
    generated = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "zero_optimization": zero,
        "zero_force_ds_cpu_optimizer": False,
        "gradient_clipping": 0.0,  # DeepSpeed's default is 1.0; the loop's Adam does not clip
        "bf16": {"enabled": bool(bf16 if cfg.bf16 is None else cfg.bf16)},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if cfg.override is None:
        return generated
    try:
        user = json.loads(Path(cfg.override).read_text())
    except ValueError as e:
        raise ConfigError(f"DeepSpeed override {cfg.override} is not valid JSON: {e}") from e
    if not isinstance(user, dict):
        raise ConfigError(f"DeepSpeed override {cfg.override} must hold a JSON object")
    merged = deep_merge(generated, user)
    if merged["zero_optimization"].get("stage") not in (0, 3):
        raise ConfigError(
            f"DeepSpeed override {cfg.override}: only ZeRO stage 0 or 3 is supported for the frozen LLM"
        )
    return merged
