"""`dist-srec train` and `dist-srec evaluate` for LLM-SRec: wire data, teacher and LM to the loop.

    dist-srec train --data data/ml-1m --teacher runs/teacher/best --llm smollm2 --out runs/srec
    dist-srec evaluate --ckpt runs/srec/best [--split test --shuffle-history]

Training resumes from OUT/last. OUT/best holds the heads with the best validation NDCG@10.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dist_srec.data.catalog import Catalog
from dist_srec.data.loader import rank_loader
from dist_srec.dist.deepspeed_config import DeepSpeedConfig
from dist_srec.errors import CheckpointError, ConfigError
from dist_srec.eval.compare import (
    cached_item_table,
    compare_models,
    encode_catalog,
    evaluate_tables,
    user_table,
)
from dist_srec.eval.protocols import EvalProtocol, result_record, select_users, write_results
from dist_srec.models.llm import LLMConfig, load_frozen_lm, resolve_llm_path
from dist_srec.models.srec import LLMSRec, LLMSRecConfig
from dist_srec.sysmem import check_mmap_threshold, fix_mmap_threshold
from dist_srec.train import checkpoint as ckpt_io
from dist_srec.train.context import TrainContext
from dist_srec.train.loop import LoopConfig, Trainer, TrainState
from dist_srec.train.srec import SRecTask, check_identity, identity
from dist_srec.train.teacher import load_teacher


@dataclass(kw_only=True)
class SRecRunConfig:
    """Everything `dist-srec train` needs; defaults are the paper's where it states them."""

    data: str
    teacher: str
    """Teacher checkpoint directory (`dist-srec pretrain-teacher` OUT/best)."""
    out: str
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
    """Fix glibc's mmap threshold at this many bytes in every training process (`dist_srec.sysmem`):
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


def build_model(
    llm_cfg: LLMConfig,
    teacher_path: str | Path,
    cat: Catalog,
    model_cfg: LLMSRecConfig,
    device: torch.device,
    *,
    deepspeed: DeepSpeedConfig | None = None,
    micro_batch: int = 1,
) -> tuple[LLMSRec, dict[str, Any]]:
    """Load the frozen LM and teacher and compose LLM-SRec; returns it with its identity parts.

    With `deepspeed`, every rank must call this (the LM is placed collectively, see
    `dist_srec.dist.engine`); `micro_batch` is the per-rank batch DeepSpeed's config records.
    """
    teacher, _ = load_teacher(teacher_path, num_items=cat.num_items)
    compose: Any = contextlib.nullcontext()
    if deepspeed is None:
        lm = load_frozen_lm(llm_cfg, device)
    else:
        from dist_srec.dist.engine import composing, load_lm_deepspeed

        lm = load_lm_deepspeed(llm_cfg, deepspeed, device, micro_batch=micro_batch)
        compose = composing(lm, deepspeed)
    with torch.random.fork_rng(), compose:
        torch.manual_seed(model_cfg.seed)  # the same initial heads on every rank and every run
        model = LLMSRec(lm, teacher.to(device), [None, *cat.titles[1:]], model_cfg)
    parts = {
        "llm_cfg": llm_cfg,
        "lm_hash": lm.content_hash(),
        "teacher_path": teacher_path,
        "teacher_sha256": ckpt_io.model_sha256(teacher_path),
        "data_dir": cat.root,
        "num_items": cat.num_items,
        "manifest_sha256": cat.manifest_sha256,
        "model_cfg": model_cfg,
    }
    return model, parts


def item_table(
    model: LLMSRec,
    num_items: int,
    batch_items: int = 256,
    progress: bool = True,
    ctx: TrainContext | None = None,
) -> Tensor:
    """The whole catalog through the item prompt, [N+1, d] (row 0 zeros); with several ranks in
    `ctx`, each encodes a 1/W share and the table is all-gathered (every rank must call this)."""
    was = model.training
    model.eval()
    if ctx is not None and ctx.world_size > 1:
        from dist_srec.dist.sharded_eval import sharded_encode_catalog

        table = sharded_encode_catalog(model.encode_items, num_items, ctx, batch_items, progress)
    else:
        table = encode_catalog(model.encode_items, num_items, batch_items, progress)
    model.train(was)
    return table


def train_srec(cfg: SRecRunConfig, ctx: TrainContext | None = None, reporter: Any = None) -> TrainState:
    """Train (or resume) LLM-SRec; every rank calls this with the same config."""
    ctx = ctx or TrainContext.from_env(cfg.device)
    fix_mmap_threshold(cfg.mmap_threshold_bytes)
    cat = Catalog.load(cfg.data)
    ctx.local_first(lambda: resolve_llm_path(cfg.llm))  # one rank per machine builds a cached copy
    if cfg.deepspeed is not None:
        from dist_srec.dist.engine import init_deepspeed_distributed

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
    user_items = cat.user_items()
    proto = EvalProtocol(
        protocol="sampled",
        split="valid",
        seed=cfg.loop.seed,
        num_users=cfg.eval_users,
        num_negatives=cfg.eval_negatives,
    )
    selected = select_users(cat.num_users, proto.num_users, proto.seed)

    def validate(t: SRecTask) -> dict[str, float]:
        m = t.model
        show = cfg.loop.progress and ctx.is_main

        def batches() -> Any:
            return rank_loader(
                cfg.data, "valid", cfg.eval_batch_size, teacher_len, ctx, shuffle=False, remainder="pad"
            )

        items = item_table(m, cat.num_items, progress=show, ctx=ctx)
        key = heads_key(m, parts["lm_hash"])  # every rank: heads partitioned by one engine are gathered
        if ctx.is_main:  # if this round becomes `best`, its evaluation reuses these vectors
            store_item_table(Path(cfg.out) / "cache", items, key)
        users = user_table(m.encode_users, batches(), cat.num_users, selected, progress=show,
                           lockstep=ctx.world_size > 1)  # fmt: skip
        return evaluate_tables(users, items, batches(), proto, user_items=user_items, num_users=cat.num_users)

    trainer = Trainer(task, loader, validate, cfg=cfg.loop, ctx=ctx, out_dir=cfg.out, reporter=reporter)
    return trainer.fit()


def load_srec(
    ckpt: str | Path, device: torch.device | str = "cpu", data: str | Path | None = None
) -> tuple[LLMSRec, dict, Catalog]:
    """Rebuild LLM-SRec from a checkpoint directory (the LM and teacher named in its config.json)."""
    ck = ckpt_io.load_checkpoint(ckpt, with_train_state=False)
    conf = ck.config
    if conf.get("format") != "dist-srec/llm-srec":
        raise CheckpointError(f"{ckpt} is not an LLM-SRec checkpoint (format {conf.get('format')!r})")
    cat = Catalog.load(data or conf["catalog"]["data"])
    llm = {k: v for k, v in conf["llm"].items() if k != "content_hash"}
    model_cfg = _model_cfg(conf["model"])
    model, parts = build_model(
        LLMConfig(**llm), conf["teacher"]["path"], cat, model_cfg, torch.device(device)
    )
    check_identity(conf, identity(**parts, train={}), Path(ckpt))
    model.load_trainable_state_dict(ck.model_state)
    model.eval()
    return model, conf, cat


def _model_cfg(d: dict[str, Any]) -> LLMSRecConfig:
    from dist_srec.losses import LossConfig
    from dist_srec.prompts import PromptConfig

    d = dict(d)
    return LLMSRecConfig(**{**d, "loss": LossConfig(**d["loss"]), "prompts": PromptConfig(**d["prompts"])})


CACHE_KEEP = 3


def heads_key(model: LLMSRec, lm_hash: str) -> str:
    """Cache key of a model's item vectors: sha256 over the heads' tensors and the LM hash."""
    return heads_key_of_state(model.trainable_state_dict(), lm_hash)


def heads_key_of_state(state: dict[str, Tensor], lm_hash: str) -> str:
    """`heads_key` from the heads' state dict (e.g. a checkpoint's, without loading the LM)."""
    h = hashlib.sha256(lm_hash.encode())
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def store_item_table(cache_dir: Path, table: Tensor, key: str) -> None:
    """Write `items-<key>.safetensors`, keeping only the `CACHE_KEEP` newest tables of the folder."""
    cached_item_table(cache_dir / f"items-{key}.safetensors", lambda: table)
    old = sorted(cache_dir.glob("items-*.safetensors"), key=lambda p: p.stat().st_mtime_ns)[:-CACHE_KEEP]
    for p in old:
        p.unlink(missing_ok=True)


def catalog_vectors(
    model: LLMSRec,
    conf: dict[str, Any],
    ckpt: str | Path,
    num_items: int,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[Tensor, Path]:
    """The [N+1, d] item table of a checkpoint, encoded once and cached under
    `<cache_dir or the run dir's cache/>/items-<heads key>.safetensors` (training's validation rounds
    write the same files, so evaluating `best` reuses the vectors of the round that made it best)."""
    key = heads_key(model, conf["llm"]["content_hash"])
    cache = Path(cache_dir or Path(ckpt).resolve().parent / "cache") / f"items-{key}.safetensors"
    return cached_item_table(cache, lambda: item_table(model, num_items, progress=progress)), cache


def evaluate_srec(
    ckpt: str | Path,
    *,
    data: str | Path | None = None,
    split: str = "test",
    num_users: int = 0,
    num_negatives: int = 99,
    seed: int = 42,
    shuffle_history: bool = False,
    exclude_history: bool = False,
    batch_size: int = 16,
    out: str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """LLM-SRec vs its teacher on `split`: sampled and full protocols, optional shuffle diagnostic."""
    model, conf, cat = load_srec(ckpt, data=data)
    protocols = [
        EvalProtocol(
            protocol="sampled", split=split, seed=seed, num_users=num_users, num_negatives=num_negatives
        ),
        EvalProtocol(
            protocol="full", split=split, seed=seed, num_users=num_users, exclude_history=exclude_history
        ),
    ]
    selected = select_users(cat.num_users, num_users, seed)
    user_items = cat.user_items()
    width = int(max(1, (user_items[0][1:] - user_items[0][:-1]).max()))  # whole histories (exact exclusion)
    ctx = TrainContext()
    batches = lambda: rank_loader(cat.root, split, batch_size, width, ctx, shuffle=False, remainder="pad")  # noqa: E731
    sha = ckpt_io.model_sha256(ckpt)
    items, cache = catalog_vectors(model, conf, ckpt, cat.num_items, cache_dir, progress)
    teacher = model.teacher
    models = {
        "llm-srec": (model.encode_users, items, model.cfg.prompts.max_history_items),
        "sasrec": (lambda b: teacher.user_vector(b["history"]), teacher.item_embeddings().detach().float(),
                   teacher.cfg.max_len),
    }  # fmt: skip
    report = compare_models(models, batches, protocols, user_items=user_items, num_users=cat.num_users,
                            selected=selected, shuffle=shuffle_history, progress=progress)  # fmt: skip
    records = []
    for name, res in report.items():
        for key, metrics in res.items():
            if key == "shuffle_cosine":
                continue
            proto = next(p for p in protocols if p.protocol == key.split("/")[-1])
            records.append(result_record(
                metrics, proto, model=name if "/" not in key else f"{name} (shuffled history)",
                checkpoint=str(ckpt) if name == "llm-srec" else conf["teacher"]["path"],
                checkpoint_sha256=sha if name == "llm-srec" else conf["teacher"]["sha256"],
                manifest_sha256=cat.manifest_sha256, counts={"num_users": cat.num_users, "num_items": cat.num_items},
                extra={"shuffle_cosine": res.get("shuffle_cosine")} if "/" in key else None,
            ))  # fmt: skip
    doc = {"split": split, "report": report, "records": records, "llm": conf["llm"],
           "item_vectors_cache": str(cache)}  # fmt: skip
    if out is not None:
        write_results(out, doc)
    return doc
