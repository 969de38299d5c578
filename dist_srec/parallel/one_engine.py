"""The one-engine pattern: a single DeepSpeed engine over the frozen LLM and the trainable heads.

    engine = deepspeed.initialize(model=LMAndHeads(lm, heads), optimizer=Adam(heads), config)
    per step and rank:  terms = engine(batch, negatives)       (= LLMSRec.loss, through the engine)
                        engine.backward(terms["loss"])         (grads of the heads, averaged over ranks:
                                                                stage 0 all-reduce, stage 3 reduce-scatter)
                        engine.step()                          (DeepSpeed steps its Adam, clears grads)

The teacher stays outside the engine: it is frozen and small, and it reads its embedding table
directly, which ZeRO-3 would have partitioned. The engine's own bf16 is off, so DeepSpeed neither casts
the heads nor keeps a second copy of them for mixed precision: the heads are fp32 and the LM keeps the
dtype it was loaded with, as in the lm-engine pattern, so both patterns compute the same function.

Under ZeRO-3 the heads are partitioned too. Modules' forwards gather their weights; the two out vectors
are read by the splice, outside any forward of theirs, so they are registered as external parameters
of the engine's module (gathered for each training forward; `LLMSRecHeads.out_vectors` gathers them in
evaluation). Adam's moments and its fp32 copy of the heads live in partitions: `state_dict` and
`load_heads` / `load_state_dict` go through DeepSpeed's full-tensor accessors, so a checkpoint holds
whole tensors in torch Adam's format and resumes under either pattern, at either stage.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from dist_srec.models.llmsrec import LLMSRec
from dist_srec.models.zero3 import gathered
from dist_srec.parallel.deepspeed_config import DeepSpeedConfig, deepspeed_dict

log = logging.getLogger(__name__)


class LMAndHeads(nn.Module):
    """What the one engine wraps: the frozen LM and the heads; forward = `LLMSRec.loss`."""

    def __init__(self, model: LLMSRec) -> None:
        super().__init__()
        self.lm, self.heads = model.lm, model.heads
        self._owner = [model]  # a list: the composition (and its teacher) is not a submodule

    def forward(self, batch: dict[str, Tensor], negatives: Tensor) -> dict[str, Tensor]:
        return self._owner[0].loss(batch, negatives)


class OneEngine:
    """One DeepSpeed engine over LM + heads owning `optimizer`; a `dist_srec.train.stepper.Stepper`.

    Args:
        model: the composed LLMSRec; its LM loaded by `load_lm_deepspeed` with `ds.pattern="one-engine"`.
        optimizer: torch Adam over `model.trainable_parameters()` (lr, betas from the loop's config).
        ds: the placement (stage 0 or 3; a user override JSON is merged as usual, bf16 forced off).
        micro_batch: users per step and rank.
    """

    def __init__(
        self, model: LLMSRec, optimizer: torch.optim.Optimizer, ds: DeepSpeedConfig, *, micro_batch: int
    ) -> None:
        import deepspeed  # deferred: DeepSpeed probes the accelerator on import and takes seconds

        cfg = deepspeed_dict(ds, micro_batch=micro_batch, bf16=False)
        cfg["bf16"] = {"enabled": False}  # see the module docstring: the heads stay fp32, the LM as loaded
        self.stage = int(cfg["zero_optimization"]["stage"])
        self.model = model
        self.params = model.trainable_parameters()  # the optimizer's order
        module = LMAndHeads(model)
        if self.stage == 3:
            for p in (model.heads.user_out, model.heads.item_out):
                deepspeed.zero.register_external_parameter(module, p)
        self.engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, config=cfg)
        model.lm.freeze()  # initialize() may call .train() on the module
        log.info("one DeepSpeed engine over LM + heads, stage %d, optimizer %s", self.stage,
                 type(self.engine.optimizer).__name__)  # fmt: skip

    def loss(self, batch: dict[str, Tensor], negatives: Tensor) -> dict[str, Tensor]:
        """`LLMSRec.loss` run through the engine's forward (its ZeRO-3 hooks gather what it needs)."""
        return self.engine(batch, negatives)

    # ----------------------------------------------------------------------------- Stepper
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.engine.optimizer.param_groups

    def backward(self, loss: Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        self.engine.step()

    def _adam(self) -> torch.optim.Optimizer:
        """The torch Adam DeepSpeed steps (stage 3: over its flat fp32 partitions)."""
        return self.engine.optimizer.optimizer if self.stage == 3 else self.engine.optimizer

    def state_dict(self) -> dict[str, Any]:
        """torch Adam's `state_dict` over the heads with whole tensors (stage 3: gathered, collective)."""
        if self.stage == 0:
            return self.engine.optimizer.state_dict()
        from deepspeed.utils import (
            safe_get_full_optimizer_state,  # deferred: DeepSpeed probes the accelerator on import and takes seconds
        )

        adam = self._adam()
        steps = [s["step"] for s in adam.state.values() if "step" in s]
        state: dict[int, dict[str, Tensor]] = {}
        if steps:
            for i, p in enumerate(self.params):
                moments = {k: safe_get_full_optimizer_state(p, k).view(p.ds_shape).cpu().clone()
                           for k in ("exp_avg", "exp_avg_sq")}  # fmt: skip
                state[i] = {"step": steps[0].detach().clone().cpu(), **moments}
        (group,) = adam.param_groups
        hyper = {k: v for k, v in group.items() if k != "params"}
        return {"state": state, "param_groups": [{**hyper, "params": list(range(len(self.params)))}]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load torch Adam's `state_dict` over the heads (from either pattern; stage 3: collective)."""
        if self.stage == 0:
            self.engine.optimizer.load_state_dict(state)
            return
        from deepspeed.utils import (
            safe_set_full_optimizer_state,  # deferred: DeepSpeed probes the accelerator on import and takes seconds
        )

        adam = self._adam()
        (group,) = adam.param_groups
        group.update({k: v for k, v in state["param_groups"][0].items() if k != "params"})
        if not state["state"]:
            return
        # Adam's state is created lazily by its first step; DeepSpeed hands Adam its flat fp32
        # partitions only during a step, so they are taken from the ZeRO-3 optimizer
        for flat in self.engine.optimizer.fp32_partitioned_groups_flat:
            st = adam.state[flat]
            for k in ("exp_avg", "exp_avg_sq"):
                st.setdefault(k, torch.zeros_like(flat))
            st["step"] = state["state"][0]["step"].detach().clone().to(torch.float32)
        for i, p in enumerate(self.params):
            for k in ("exp_avg", "exp_avg_sq"):
                safe_set_full_optimizer_state(p, state["state"][i][k].to(torch.float32).reshape(-1), k)

    def load_heads(self, weights: dict[str, Tensor]) -> None:
        """Load the heads' weights (stage 3: into the partitions and DeepSpeed's fp32 copy; collective)."""
        if self.stage == 0:
            self.model.load_trainable_state_dict(weights)
            return
        from deepspeed.utils import (
            safe_set_full_fp32_param,  # deferred: DeepSpeed probes the accelerator on import and takes seconds
        )

        params = list(self.model.heads.parameters())
        with gathered(params, modifier_rank=0):  # every rank loads the same weights
            self.model.heads.load_state_dict(weights)
        for name, p in self.model.heads.named_parameters():
            safe_set_full_fp32_param(p, weights[name].to(torch.float32))
