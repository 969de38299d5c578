"""Training LLM-SRec: `SRecRunConfig` (everything `dist-srec train` needs) and `train_srec`, which wires
data, teacher and LM to the one loop (`dist_srec.train.loop`) with a validation round that encodes the
catalog once and scores the validation users under the sampled protocol.

Training resumes from OUT/last. OUT/best holds the heads with the best validation NDCG@10. Each
validation round leaves its item vectors in OUT/cache as an item-vector store
(`dist_srec.data.item_vectors`), so evaluating `best` reuses the vectors of the round that made it best.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from dist_srec.data.catalog import Catalog
from dist_srec.data.item_vectors import TABLE_LAYOUT, prune_stores, store_dir, vectors_identity, write_table
from dist_srec.data.loader import rank_loader
from dist_srec.errors import ConfigError
from dist_srec.eval.protocols import EvalProtocol, select_users
from dist_srec.eval.tables import evaluate_tables, item_table, user_table
from dist_srec.models.llmsrec import LLMSRecConfig
from dist_srec.models.lm_config import LLMConfig
from dist_srec.models.lm_sources import resolve_llm_path
from dist_srec.parallel.context import TrainContext
from dist_srec.parallel.deepspeed_config import DeepSpeedConfig
from dist_srec.parallel.lm_engine import init_deepspeed_distributed
from dist_srec.storage import RunDir
from dist_srec.train.loop import Trainer
from dist_srec.train.loop_types import LoopConfig, TrainState
from dist_srec.train.preflight import check_run_inputs
from dist_srec.train.srec_build import build_model
from dist_srec.train.srec_task import SRecTask, identity
from dist_srec.train.sysmem import check_mmap_threshold, fix_mmap_threshold

VALIDATION_STORES_KEPT = 3
"""Validation item-vector stores kept in OUT/cache (the newest; one per round)."""


@dataclass(kw_only=True)
class SRecRunConfig:
    """Everything `dist-srec train` needs; defaults are the paper's where it states them."""

    data: str
    """Prepared data directory (`dist-srec prepare`): a local path or a URI (s3://, gs://, file://, ...;
    shards stream from it, `dist_srec.storage`)."""
    teacher: str
    """Teacher checkpoint directory (`dist-srec pretrain-teacher` OUT/best): a local path or a URI."""
    out: str
    """Run directory (OUT/last, OUT/best, metrics, run file): a local path, or a URI the run is published
    to after every checkpoint (worked in a local mirror, `dist_srec.storage.RunDir`)."""
    llm: LLMConfig = field(default_factory=LLMConfig)
    model: LLMSRecConfig = field(default_factory=LLMSRecConfig)
    loop: LoopConfig = field(
        default_factory=lambda: LoopConfig(lr=1e-4, lr_decay=0.95, epochs=10, patience=3)
    )
    batch_size: int = 20
    """Users per step and rank (the paper's 20; x (1 + K) item prompts)."""
    num_workers: int = 0
    eval_users: int = 1000
    """Validation: a seeded subset of this many users (0 = all)."""
    eval_batch_size: int = 16
    eval_negatives: int = 99
    """Validation: sampled negatives per user."""
    device: str | None = None
    deepspeed: DeepSpeedConfig | None = None
    """Place the frozen LLM with DeepSpeed (ZeRO stage 0 or 3; needs a process group, e.g. Ray Train
    through `launch/train.py`); None loads it as a plain replicated torch module."""
    mmap_threshold_bytes: int | None = None
    """Fix glibc's mmap threshold at this many bytes in every training process (`dist_srec.train.sysmem`):
    freed activation and gathered-weight buffers go back to the OS instead of staying resident in the
    heap. With SmolLM2 on CPU it cut a rank's peak RSS by 28% (stage 0) and 51% (ZeRO-3) but made the
    LM passes 37% slower (fresh pages fault in on every allocation); so it is off (None) by default,
    for a run that is short of host memory, e.g. 131072 (`benchmarks/results/lm_memory.md`)."""

    def __post_init__(self) -> None:
        check_mmap_threshold(self.mmap_threshold_bytes)
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config field '{name}': must be >= 1, got {getattr(self, name)}")
        if self.eval_users < 0:
            raise ConfigError(f"config field 'eval_users': must be >= 0, got {self.eval_users}")


def train_srec(cfg: SRecRunConfig, ctx: TrainContext | None = None, reporter: Any = None) -> TrainState:
    """Train (or resume) LLM-SRec; every rank calls this with the same config."""
    ctx = ctx or TrainContext.from_env(cfg.device)
    fix_mmap_threshold(cfg.mmap_threshold_bytes)
    cat = Catalog.load(cfg.data)
    user_items = cat.user_items()
    check_run_inputs(cat, user_items, ctx, splits=("train", "valid"), eval_negatives=cfg.eval_negatives,
                     train_negatives=cfg.model.loss.num_negatives)  # fmt: skip
    ctx.local_first(lambda: resolve_llm_path(cfg.llm))  # one rank per machine builds a cached copy
    if cfg.deepspeed is not None:
        init_deepspeed_distributed()
    model, parts = build_model(cfg.llm, cfg.teacher, cat, cfg.model, ctx.device, deepspeed=cfg.deepspeed,
                               micro_batch=cfg.batch_size)  # fmt: skip
    teacher_len = model.teacher.cfg.max_len
    train_cfg = {"batch_size": cfg.batch_size, "loop": asdict(cfg.loop), "world_size": ctx.world_size}
    task = SRecTask(
        model, identity(**parts, train=train_cfg), deepspeed=cfg.deepspeed, micro_batch=cfg.batch_size
    )
    loader = rank_loader(cfg.data, "train", cfg.batch_size, teacher_len, ctx, shuffle=True, seed=cfg.loop.seed,
                     num_workers=cfg.num_workers, remainder="drop")  # fmt: skip
    out = RunDir(cfg.out).local  # where the Trainer writes: OUT, or the local mirror of a URI
    proto = EvalProtocol.validation(cfg.loop.seed, cfg.eval_users, cfg.eval_negatives)
    selected = select_users(cat.num_users, proto.num_users, proto.seed)

    def validate(t: SRecTask) -> dict[str, float]:
        m = t.model
        show = cfg.loop.progress and ctx.is_main

        def batches() -> Any:
            return rank_loader(
                cfg.data, "valid", cfg.eval_batch_size, teacher_len, ctx, shuffle=False, remainder="pad"
            )

        items = item_table(m, cat.num_items, progress=show, ctx=ctx)
        heads = m.trainable_state_dict()  # every rank: heads partitioned by one engine are gathered
        if ctx.is_main:  # if this round becomes `best`, its evaluation reuses these vectors
            ident = vectors_identity(t.config_json(), heads, catalog_sha256=cat.content_sha256,
                                     num_items=cat.num_items)  # fmt: skip
            write_table(store_dir(out, ident, TABLE_LAYOUT.dtype), ident, items, TABLE_LAYOUT)
            prune_stores(out / "cache", TABLE_LAYOUT.dtype, keep=VALIDATION_STORES_KEPT)
        users = user_table(m.encode_users, batches(), cat.num_users, selected, progress=show,
                           lockstep=ctx.world_size > 1)  # fmt: skip
        return evaluate_tables(users, items, batches(), proto, user_items=user_items, num_users=cat.num_users)

    trainer = Trainer(task, loader, validate, cfg=cfg.loop, ctx=ctx, out_dir=cfg.out, reporter=reporter,
                      run_file=asdict(cfg))  # fmt: skip
    return trainer.fit()
