"""DeepSpeed placement of the frozen LLM, in one of two patterns (`DeepSpeedConfig.pattern`).

"lm-engine" (the default): the LM's decoder body is wrapped by
`deepspeed.initialize(model=body, config=...)` without an optimizer. Under ZeRO-3 it is built
partitioned (`HfDeepSpeedConfig` kept alive during `from_pretrained`, which then runs under
`deepspeed.zero.Init`), and the engine's hooks gather each layer's weights around its forward and its
input-gradient backward. The trainable heads are replicated; `SRecTask.sync_grads` averages their
gradients with one coalesced all-reduce per step (what DDP would do, without a wrapper around a module
that also holds the frozen LM), and the loop's torch Adam steps them.

    per step and rank:  emb = splice(table, item_proj(teacher items), out vectors)   [b, T, H]
                        h   = LM body(emb)   (ZeRO-3: all-gather layer k, run, free)  [b, T, H]
                        loss -> backward to the heads through the frozen LM (grads of inputs only)
                        all-reduce(head grads) / W; Adam on the heads

"one-engine": the LM is loaded the same way but gets no engine of its own; `SRecTask.make_stepper`
builds one engine over LM + heads that owns the loop's Adam (over the heads only), and the same loop
calls `engine(batch, negatives)`, `engine.backward(loss)` (all-reduce at stage 0, reduce-scatter at
stage 3) and `engine.step()`; see `dist_srec.parallel.one_engine`. Under ZeRO-3 the heads and their Adam
moments are partitioned as well; the constant-prefix keys/values are computed with the whole LM
gathered once while the model is composed (`composing`), before the engine's hooks exist.

In both, nothing of the LM is ever in an optimizer or a checkpoint: checkpoints hold the heads (whole
tensors), torch Adam's state over them (whole tensors) and the LM's content hash, so no ZeRO shard
needs saving and a run resumes at either stage and under either pattern. Measured with SmolLM2
(`benchmarks/bench_train_step.py --patterns lm-engine,one-engine`, stage 0, 1 and 2 CPU workers) the
two are within 2% of each other, inside run-to-run noise; "lm-engine" stays the default because its
heads and Adam state stay plain, whole torch tensors (nothing to gather at a checkpoint).

Caveats: while a ZeRO-3 LM lives, its `HfDeepSpeedConfig` makes every later `from_pretrained` in the
process partition its model too (a collective); and DeepSpeed leaves some weights gathered when
several forwards share one backward, so `SRecTask.sync_grads` calls `FrozenLM.release_gathered` each
step (lm-engine pattern).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Any

import torch
import torch.distributed as dist

from dist_srec.errors import ConfigError
from dist_srec.models.frozen_lm import FrozenLM, load_frozen_lm
from dist_srec.models.lm_config import LLMConfig, resolve_dtype
from dist_srec.models.zero3 import gathered, is_partitioned
from dist_srec.parallel.deepspeed_config import DeepSpeedConfig, deepspeed_dict

log = logging.getLogger(__name__)


def init_deepspeed_distributed() -> None:
    """Make DeepSpeed's comm layer use the existing torch process group (Ray Train's or torchrun's).

    The shared-memory comm op is disabled first: it JIT-compiles on first use and crashed on CPU.
    Raises `ConfigError` without a process group: DeepSpeed placement runs under `launch/train.py` (Ray Train, also with one worker) or torchrun.
    """
    import deepspeed  # deferred: DeepSpeed probes the accelerator on import and takes seconds
    import deepspeed.ops  # deferred: DeepSpeed probes the accelerator on import and takes seconds

    if not dist.is_initialized():
        raise ConfigError(
            "DeepSpeed placement of the LLM needs an initialised process group: run through "
            "launch/train.py (Ray Train, any number of workers) or torchrun, or drop the deepspeed config"
        )
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend=dist.get_backend())


def llm_dtype_for(llm: LLMConfig, ds: DeepSpeedConfig, device: torch.device) -> LLMConfig:
    """`llm` with a concrete dtype that agrees with the DeepSpeed bf16 flag.

    `ds.bf16=None` follows `llm.dtype` (auto: bf16 where native); an explicit flag that contradicts an
    explicit `llm.dtype` is a `ConfigError` (zero.Init would silently cast to the config's dtype).
    """
    resolved = resolve_dtype(llm.dtype, device)
    if ds.bf16 is None:
        dtype = resolved
    else:
        dtype = torch.bfloat16 if ds.bf16 else torch.float32
        if llm.dtype != "auto" and dtype != resolved:
            raise ConfigError(
                f"config field 'deepspeed.bf16'={ds.bf16} contradicts 'llm.dtype'={llm.dtype}; set one of them"
            )
    if dtype == torch.float16:
        raise ConfigError("float16 is not supported with DeepSpeed here (use bfloat16 or float32)")
    name = {torch.bfloat16: "bfloat16", torch.float32: "float32"}[dtype]
    return dataclasses.replace(llm, dtype=name)


def load_lm_deepspeed(
    llm: LLMConfig, ds: DeepSpeedConfig, device: torch.device, *, micro_batch: int
) -> FrozenLM:
    """Load the frozen LM placed by DeepSpeed (stage 0: replicated, stage 3: partitioned).

    The process group must be initialised (`init_deepspeed_distributed`); every rank calls this.
    The returned `FrozenLM` keeps its engine (around `lm.body`) in `keep_alive`; call the body as
    usual (`FrozenLM.hidden`): the engine's hooks sit on it and every submodule.
    """
    import deepspeed  # deferred: DeepSpeed probes the accelerator on import and takes seconds
    from transformers.integrations import HfDeepSpeedConfig  # deferred: transformers takes seconds to import

    llm = llm_dtype_for(llm, ds, device)
    cfg = deepspeed_dict(ds, micro_batch=micro_batch, bf16=llm.dtype == "bfloat16")
    stage = int(cfg["zero_optimization"]["stage"])
    keep: list[object] = []
    if stage == 3:
        keep.append(HfDeepSpeedConfig(cfg))  # from_pretrained sees it (weakref) and uses zero.Init
    lm = load_frozen_lm(llm, device)
    if ds.pattern == "one-engine":  # the engine comes later, over LM + heads (`one_engine.OneEngine`)
        lm.keep_alive += keep
        local, total = partition_numel(lm)
        log.info("LLM for one DeepSpeed engine, stage %d: %d of %d weights on this rank", stage, local, total)
        return lm
    # The engine wraps the decoder body, the module `FrozenLM.hidden` calls: ZeRO-3 releases a
    # forward's gathered weights and resets its trace at the end of its top module's forward.
    engine, *_ = deepspeed.initialize(model=lm.body, config=cfg)
    lm.keep_alive += [*keep, engine]
    lm.freeze()  # initialize() may call .train() on the module
    local, total = partition_numel(lm)
    log.info("LLM under DeepSpeed stage %d: %d of %d weights on this rank", stage, local, total)
    return lm


def composing(lm: FrozenLM, ds: DeepSpeedConfig | None) -> contextlib.AbstractContextManager:
    """Around composing `LLMSRec` on `lm`: the constant-prefix forward it runs needs the LM's layers.

    Under the one-engine pattern at stage 3 no engine hooks exist yet to gather them layer by layer,
    so the whole LM is gathered for the while (transiently a full copy per rank; every rank must
    enter); otherwise nothing happens.
    """
    params = list(lm.model.parameters())
    # (not `lm.partitioned`: the embedding resized for the special tokens is partitioned by the engine)
    if ds is None or ds.pattern != "one-engine" or not any(is_partitioned(p) for p in params):
        return contextlib.nullcontext()
    return gathered(params)


def partition_numel(lm: FrozenLM | torch.nn.Module) -> tuple[int, int]:
    """(elements held by this rank, elements of the whole model) over the LM's distinct parameters."""
    model = lm.model if isinstance(lm, FrozenLM) else lm
    local = total = 0
    for p in model.parameters():
        if is_partitioned(p):
            local += int(p.ds_tensor.numel())
            total += int(p.ds_numel)
        else:
            local += p.numel()
            total += p.numel()
    return local, total


def describe(lm: FrozenLM) -> dict[str, Any]:
    """Plain numbers about the LM's placement, for metrics: stage-3 share held by this rank."""
    local, total = partition_numel(lm)
    return {"lm_params_local": local, "lm_params_total": total}
