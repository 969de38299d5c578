"""Training LLM-SRec: the `TrainTask` that `dist_srec.train.loop.Trainer` runs, and its checkpoints.

Per step, for this rank's batch of B train samples (history, target):
    negatives  K per user, uniform over items outside the user's window and target (seeded per step)
    terms      LLMSRec.loss: retrieval CE over [target, negatives] + distillation MSE + uniformity
    update     Adam(lr 1e-4, betas (0.9, 0.98)) over the heads only; lr x0.95 per validation round
    tokens     the real prompt tokens run through the LM (logged as "tokens": the loop's tokens/s)

Placement (`DeepSpeedConfig.pattern`): "lm-engine" (or no DeepSpeed): the loop's torch Adam steps the
heads after `sync_grads` averaged their gradients; "one-engine": one DeepSpeed engine over the LM and
the heads owns the optimizer and the averaging (`make_stepper`, `dist_srec.parallel.one_engine`).

A checkpoint holds only the heads (`model.safetensors`), plus a config.json naming the LM (path and
content hash), the teacher (path and sha256) and the catalog (item count, manifest sha256): enough to
rebuild the model and to refuse a checkpoint that belongs to another LM, teacher or catalog.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from dist_srec.data.catalog import catalog_mismatch
from dist_srec.errors import CheckpointError
from dist_srec.models.llmsrec import LLMSRec
from dist_srec.parallel.context import TrainContext
from dist_srec.parallel.deepspeed_config import DeepSpeedConfig
from dist_srec.parallel.one_engine import OneEngine
from dist_srec.storage import is_uri
from dist_srec.train.stepper import Stepper, TorchStepper
from dist_srec.train.teacher_loss import sample_train_negatives

CHECKPOINT_FORMAT = "dist-srec/llm-srec"
CHECKPOINT_VERSION = 1


class SRecTask:
    """LLM-SRec as a `TrainTask`: the heads train, the LM and the teacher stay frozen.

    Args:
        model: the composed `LLMSRec`.
        identity: what the checkpoint belongs to and how to rebuild it: {"llm": {...}, "teacher":
            {"path", "sha256"}, "catalog": `Catalog.identity()`, "model": {...},
            "train": {...}}.
        deepspeed: the DeepSpeed placement the LM was loaded with (its `pattern` says who steps).
        micro_batch: users per step and rank (DeepSpeed's config records it).
    """

    name = "llm-srec"

    def __init__(
        self,
        model: LLMSRec,
        identity: Mapping[str, Any],
        *,
        deepspeed: DeepSpeedConfig | None = None,
        micro_batch: int = 1,
    ):
        self.module = model
        self.model = model
        self.identity = dict(identity)
        self.num_items = int(self.identity["catalog"]["num_items"])
        self.ctx = TrainContext()
        self.deepspeed, self.micro_batch = deepspeed, micro_batch
        self.engine: OneEngine | None = None

    def setup(self, ctx: TrainContext) -> None:
        """Heads to the device. With several ranks, gradients are averaged in `sync_grads` (the heads
        are small: one coalesced all-reduce per step), so the frozen LM needs no DDP wrapper."""
        self.ctx = ctx
        self.model.heads.to(ctx.device)
        if ctx.world_size > 1:
            for p in self.trainable():  # start every rank from rank 0's heads
                dist.broadcast(p.data, src=0)

    def trainable(self) -> list[torch.nn.Parameter]:
        return self.model.trainable_parameters()

    def make_stepper(self, optimizer: torch.optim.Optimizer) -> Stepper:
        """`optimizer` (Adam over `trainable()`) stepped by the loop after `sync_grads`, or, under the
        one-engine pattern, handed to the DeepSpeed engine created here over the LM and the heads."""
        if self.deepspeed is None or self.deepspeed.pattern != "one-engine":
            return TorchStepper(optimizer, self.sync_grads)

        self.engine = OneEngine(self.model, optimizer, self.deepspeed, micro_batch=self.micro_batch)
        return self.engine

    def loss(self, batch: Mapping[str, Tensor], gen: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        k = self.model.cfg.loss.num_negatives
        seen = torch.cat([batch["history"], batch["target"][:, None]], 1).cpu()
        negatives = sample_train_negatives(seen, (seen.shape[0], k), self.num_items, gen)
        self.model.take_prompt_tokens()
        terms = (
            self.model.loss(dict(batch), negatives)
            if self.engine is None
            else self.engine.loss(dict(batch), negatives)
        )
        logs = {k: float(v.detach()) for k, v in terms.items() if k != "loss"}
        return terms["loss"], {**logs, "tokens": float(self.model.take_prompt_tokens())}

    def sync_grads(self) -> None:
        """Average the heads' gradients over ranks (a no-op on one rank). Called after each backward,
        it also re-partitions LM weights that ZeRO-3 left gathered (`FrozenLM.release_gathered`)."""
        self.model.lm.release_gathered()
        if self.ctx.world_size <= 1:
            return
        params = [p for p in self.trainable() if p.grad is not None]
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        flat /= self.ctx.world_size
        offset = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n

    def state_dict(self) -> dict[str, Tensor]:
        return self.model.trainable_state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if self.engine is not None:
            self.engine.load_heads(state)  # also the optimizer's master copy of the weights
        else:
            self.model.load_trainable_state_dict(state)

    def config_json(self) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **self.identity}

    def check_checkpoint(self, config: Mapping[str, Any], path: Path) -> None:
        check_identity(config, self.identity, path)


def require_srec_format(config: Mapping[str, Any], path: str | Path) -> None:
    """Raise `CheckpointError` unless checkpoint `config` is an LLM-SRec checkpoint's."""
    if config.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an LLM-SRec checkpoint (format {config.get('format')!r})")


def check_identity(config: Mapping[str, Any], expected: Mapping[str, Any], path: Path) -> None:
    """Raise `CheckpointError` unless checkpoint `config` was made for the same LM, teacher, catalog and
    head shapes as `expected`."""
    require_srec_format(config, path)
    why = catalog_mismatch(config["catalog"], expected["catalog"])
    if why is not None:
        raise CheckpointError(f"checkpoint {path} does not fit this catalog: {why}")
    pairs = [
        ("llm.content_hash", config["llm"]["content_hash"], expected["llm"]["content_hash"]),
        ("teacher.sha256", config["teacher"]["sha256"], expected["teacher"]["sha256"]),
        ("model", _shape_cfg(config["model"]), _shape_cfg(expected["model"])),
    ]
    for name, got, want in pairs:
        if got != want:
            raise CheckpointError(f"checkpoint {path} has {name}={got!r}, but this run has {want!r}")


def _shape_cfg(model_cfg: Mapping[str, Any]) -> tuple:
    return tuple(model_cfg.get(k) for k in ("head_hidden", "out_dim", "teacher_hidden"))


def identity(
    *,
    llm_cfg: Any,
    lm_hash: str,
    teacher_path: str | Path,
    teacher_sha256: str,
    catalog: Mapping[str, Any],
    model_cfg: Any,
    train: Mapping[str, Any],
) -> dict[str, Any]:
    """The identity block of an LLM-SRec checkpoint's config.json."""
    return {
        "llm": {**asdict(llm_cfg), "content_hash": lm_hash},
        "teacher": {
            "path": teacher_path if is_uri(teacher_path) else str(Path(teacher_path).resolve()),
            "sha256": teacher_sha256,
        },
        "catalog": dict(catalog),
        "model": asdict(model_cfg),
        "train": dict(train),
    }
