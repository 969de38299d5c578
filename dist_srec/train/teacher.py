"""Pre-training the SASRec teacher: a `TeacherTask` for the one training loop (`dist_srec.train.loop`),
which runs it alone or under DDP / Ray Train unchanged.

Objective (SASRec; pmixer/SASRec.pytorch and LLM-SRec's teacher): for a train sample with left-padded
history s (width L) and target t, the positive at position l is the next item p_l (s shifted by one,
then t) and the negative n_l is drawn uniformly from items not in the user's window (s and t). With
h_l the model's output at position l and E the item table,

    loss = mean_l softplus(-<h_l, E[p_l]>) + mean_l softplus(<h_l, E[n_l]>)   over l with s_l != 0
           (+ l2_emb * ||E||_F)

optimised with Adam(lr 1e-3, betas (0.9, 0.98)), no lr decay. Validation (sampled NDCG@10 on the
valid split by default) runs every `loop.eval_every_epochs` epochs and once at the end; training stops after
`patience` rounds without improvement, or once `time_budget_s` is spent. Rank 0 writes `out/best`
(the teacher: model.safetensors + config.json) and `out/last` (plus optimizer, RNG, progress and the
data cursor of every rank); a run restarted with the same `out` resumes from `out/last`.

`loss="sampled_softmax"` (not the reference; an option for full-catalog ranking quality, as the
HSTU repo trains its SASRec) instead draws K items m_1..m_K uniformly once per batch and minimises
    mean_l -log softmax([<h_l, E[p_l]>, <h_l, E[m_1]>, ..., <h_l, E[m_K]>])_0
with negatives equal to p_l masked out. `loss="softmax"` takes every item as a negative:
    mean_l -log softmax(E[1:] h_l)[p_l]
(the "SASRec+" objective of Klenitskiy & Vasilev, RecSys 2023; it also pushes down the user's own history,
which matters for full-catalog ranking). `eval_protocol="full"` selects the best checkpoint on
full-catalog NDCG@10 of the valid split instead of the sampled protocol's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dist_srec.config import check
from dist_srec.data.catalog import Catalog, catalog_mismatch
from dist_srec.data.loader import rank_loader
from dist_srec.errors import CheckpointError
from dist_srec.eval.protocols import EvalProtocol
from dist_srec.eval.teacher_eval import evaluate_model
from dist_srec.models.sasrec import SASRec, SASRecConfig
from dist_srec.parallel.context import TrainContext
from dist_srec.train import checkpoint as ckpt_io
from dist_srec.train.loop import Trainer
from dist_srec.train.loop_types import BatchLoader, LoopConfig, Reporter, TrainState
from dist_srec.train.preflight import check_run_inputs
from dist_srec.train.teacher_loss import sampled_softmax_loss, softmax_loss, teacher_loss

__all__ = ["TeacherTask", "TeacherTrainConfig", "TrainState", "load_teacher", "train_teacher"]

CHECKPOINT_FORMAT = "dist-srec/sasrec-teacher"
CHECKPOINT_VERSION = 1


TEACHER_LOOP_DEFAULTS: dict[str, Any] = {
    "epochs": 200, "lr": 1e-3, "betas": (0.9, 0.98), "eval_every_epochs": 20, "patience": 5,
}  # fmt: skip
"""Where the teacher's loop differs from `LoopConfig`'s defaults (the reference's settings): Adam(lr 1e-3,
betas (0.9, 0.98)), no lr decay, up to 200 epochs, validation every 20 epochs, early stop after 5 rounds
without gain."""


def teacher_loop(**overrides: Any) -> LoopConfig:
    """The teacher's `LoopConfig`: `TEACHER_LOOP_DEFAULTS` with `overrides` on top."""
    return LoopConfig(**{**TEACHER_LOOP_DEFAULTS, **overrides})


LOSSES = ("bce", "sampled_softmax", "softmax")


@dataclass(kw_only=True)
class TeacherTrainConfig:
    """`dist-srec pretrain-teacher`: the loop (optimisation, validation cadence, checkpoints) plus what
    is the teacher's own: batch, objective and validation set. LLM-SRec's `SRecRunConfig` nests the same
    `LoopConfig`."""

    loop: LoopConfig = field(default_factory=teacher_loop)
    batch_size: int = 128
    loss: str = "bce"
    """"bce" (the reference: one negative per position), "sampled_softmax" (K shared negatives) or
    "softmax" (the whole catalog)."""
    num_negatives: int = 128
    """K for `loss="sampled_softmax"` (ignored by "bce")."""
    l2_emb: float = 0.0
    """Weight of ||E||_F added to the loss (the reference's --l2_emb; 0 there by default)."""
    eval_users: int = 10000
    """Validation users (seeded subset; 0 = all), as the papers' 10,000."""
    eval_negatives: int = 99
    """Sampled negatives per validation user (the papers: 99)."""
    eval_protocol: str = "sampled"
    """Validation (and so the best checkpoint) by "sampled" (1 + `eval_negatives`) or "full"-catalog
    NDCG@10."""
    eval_batch_size: int = 256
    num_workers: int = 0

    def __post_init__(self) -> None:
        for name in ("batch_size", "eval_batch_size", "eval_negatives"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("eval_users", "num_workers"):
            check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        check(self.l2_emb >= 0, "l2_emb", f"must be >= 0, got {self.l2_emb}")
        check(
            self.loss in LOSSES, "loss", f"must be one of {', '.join(map(repr, LOSSES))}, got {self.loss!r}"
        )
        check(
            self.eval_protocol in ("sampled", "full"),
            "eval_protocol",
            f"must be 'sampled' or 'full', got {self.eval_protocol!r}",
        )
        check(self.num_negatives >= 1, "num_negatives", f"must be >= 1, got {self.num_negatives}")


@dataclass(kw_only=True)
class TeacherRunConfig:
    """`dist-srec pretrain-teacher` (and `launch pretrain-teacher`): a prepared data dir in, a teacher
    out. Written resolved to OUT/config.yaml."""

    data: str
    """Prepared data directory (`dist-srec prepare`): a local path or a URI (s3://, gs://, file://, ...)."""
    out: str
    """Run directory: OUT/best (the teacher LLM-SRec loads), OUT/last, OUT/results.json, OUT/config.yaml;
    a local path, or a URI the run is published to after every checkpoint (`dist_srec.storage.RunDir`)."""
    model: SASRecConfig = field(default_factory=SASRecConfig)
    train: TeacherTrainConfig = field(default_factory=TeacherTrainConfig)
    final_eval: bool = True
    """Afterwards evaluate OUT/best on the test split (both protocols) into OUT/results.json (done by
    `dist-srec pretrain-teacher` and `launch`, through `dist_srec.inference.evaluate.evaluate_teacher_run`;
    `run_teacher` itself only trains)."""


def run_teacher(
    run: TeacherRunConfig, ctx: TrainContext | None = None, reporter: Reporter | None = None
) -> TrainState:
    """`pretrain_teacher` of a run config; OUT/config.yaml records it."""
    model = {k: v for k, v in asdict(run.model).items() if k != "num_items"}
    return pretrain_teacher(run.data, run.out, model=model, cfg=run.train, ctx=ctx, reporter=reporter,
                            run_file=asdict(run))  # fmt: skip


def check_teacher_config(
    config: Mapping[str, Any],
    path: Path,
    *,
    num_items: int | None = None,
    hidden: int | None = None,
    catalog: Mapping[str, Any] | None = None,
) -> SASRecConfig:
    """The model config of a teacher checkpoint's config.json, checked against the catalog it meets
    (`catalog`: `Catalog.identity()`; its item count, and that it is the very catalog trained on)."""
    if config.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a SASRec teacher checkpoint (format {config.get('format')!r})")
    cfg = SASRecConfig(**config["model"])
    if catalog is not None:
        why = catalog_mismatch({"num_items": cfg.num_items, **config.get("catalog", {})}, catalog)
        if why is not None:
            raise CheckpointError(f"teacher checkpoint {path} does not fit this catalog: {why}; train the "
                                  "teacher on this data (dist-srec pretrain-teacher) or use its catalog")  # fmt: skip
    if num_items is not None and cfg.num_items != num_items:
        raise CheckpointError(
            f"teacher checkpoint {path} was trained on a catalog of {cfg.num_items} items, but this catalog "
            f"has {num_items}; train the teacher on this data (dist-srec pretrain-teacher) or use its catalog"
        )
    if hidden is not None and cfg.hidden != hidden:
        raise CheckpointError(f"teacher checkpoint {path} has dimension D={cfg.hidden}, expected D={hidden}")
    return cfg


def teacher_config_json(
    model_cfg: SASRecConfig, *, catalog: Mapping[str, Any], train: Mapping[str, Any]
) -> dict:
    """config.json of a teacher checkpoint: the model config plus what it was trained on."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": asdict(model_cfg),
        "catalog": dict(catalog),
        "train": dict(train),
    }


def load_teacher(
    path: str | Path,
    *,
    num_items: int | None = None,
    hidden: int | None = None,
    with_train_state: bool = False,
    catalog: Mapping[str, Any] | None = None,
) -> tuple[SASRec, ckpt_io.Checkpoint]:
    """Rebuild a teacher from a checkpoint directory, checked against the catalog it will be used with.

    Raises `CheckpointError` when the checkpoint is not a teacher, or its item count or dimension differ
    from `num_items` / `hidden` (when given), or its tensors do not fit its own config.
    """
    ck = ckpt_io.load_checkpoint(path, with_train_state=with_train_state)
    model = SASRec(
        check_teacher_config(ck.config, ck.path, num_items=num_items, hidden=hidden, catalog=catalog)
    )
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ck.model_state.items()}
    if expected != got:
        diff = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
        raise CheckpointError(
            f"teacher checkpoint {ck.path} does not match its config.json: tensors {diff[:5]}"
        )
    model.load_state_dict(ck.model_state)
    return model, ck


class TeacherTask:
    """The teacher as a `dist_srec.train.loop.TrainTask`: every SASRec parameter is trained."""

    name = "teacher"

    def __init__(self, model: SASRec, cfg: TeacherTrainConfig, meta: Mapping[str, Any] | None = None):
        self.model, self.module, self.cfg, self.meta = model, model, cfg, dict(meta or {})
        self.ddp: torch.nn.Module = model

    def setup(self, ctx: TrainContext) -> None:
        self.model.to(ctx.device)
        self.ddp = ctx.wrap(self.model)

    def trainable(self) -> list[torch.nn.Parameter]:
        return list(self.model.parameters())

    def loss(self, batch: Mapping[str, Tensor], gen: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        cfg, n_items, max_len = self.cfg, self.model.cfg.num_items, self.model.cfg.max_len
        if cfg.loss == "bce":
            loss, n = teacher_loss(self.ddp, batch, n_items, gen, max_len)
        elif cfg.loss == "softmax":
            loss, n = softmax_loss(self.ddp, batch, max_len)
        else:
            loss, n = sampled_softmax_loss(self.ddp, batch, n_items, gen, max_len, cfg.num_negatives)
        if cfg.l2_emb > 0:
            loss = loss + cfg.l2_emb * self.model.item_emb.weight.norm()
        return loss, {"positions": float(n)}

    def state_dict(self) -> dict[str, Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.model.load_state_dict(state)

    def config_json(self) -> dict[str, Any]:
        return teacher_config_json(self.model.cfg, catalog=self.meta, train=asdict(self.cfg))

    def check_checkpoint(self, config: Mapping[str, Any], path: Path) -> None:
        mine = self.model.cfg
        cfg = check_teacher_config(config, path, num_items=mine.num_items, hidden=mine.hidden,
                                   catalog=self.meta or None)  # fmt: skip
        if asdict(cfg) != asdict(mine):
            raise CheckpointError(f"{path} holds a teacher with config {asdict(cfg)}, not {asdict(mine)}")


def train_teacher(
    model: SASRec,
    loader: BatchLoader,
    validate: Callable[[SASRec], dict[str, float]],
    *,
    cfg: TeacherTrainConfig,
    ctx: TrainContext | None = None,
    out_dir: str | Path,
    meta: Mapping[str, Any] | None = None,
    reporter: Reporter | None = None,
    run_file: Mapping[str, Any] | None = None,
) -> TrainState:
    """Train (or resume) the teacher; see the module docstring. Every rank calls it with its own loader.

    `validate(model)` gets the eval-mode SASRec and must return the same metrics on every rank.
    """
    task = TeacherTask(model, cfg, meta)
    trainer = Trainer(
        task, loader, lambda t: validate(t.model), cfg=cfg.loop, ctx=ctx or TrainContext(),
        out_dir=out_dir, reporter=reporter, run_file=run_file,
    )  # fmt: skip
    return trainer.fit()


def pretrain_teacher(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    model: dict[str, Any] | None = None,
    cfg: TeacherTrainConfig | None = None,
    ctx: TrainContext | None = None,
    reporter: Reporter | None = None,
    run_file: Mapping[str, Any] | None = None,
) -> TrainState:
    """Train (or resume) the teacher on a prepared data dir; every rank calls this. `run_file` (the
    resolved run config) is written to OUT/config.yaml. OUT/best is the
    teacher; `dist_srec.inference.evaluate.evaluate_teacher_run` evaluates it on test afterwards.

    `reporter` is passed to the loop (e.g. `ray.train.report` under Ray Train).
    """

    cfg, ctx = cfg or TeacherTrainConfig(), ctx or TrainContext()
    cat = Catalog.load(data_dir)
    user_items = cat.user_items()
    sampled = cfg.num_negatives if cfg.loss == "sampled_softmax" else None
    check_run_inputs(cat, user_items, ctx, splits=("train", "valid"), eval_negatives=cfg.eval_negatives if cfg.eval_protocol == "sampled" else None,
                     train_negatives=sampled)  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(cfg.loop.seed)  # the same initial weights on every rank and every run
        teacher = SASRec(SASRecConfig(num_items=cat.num_items, **(model or {})))
    train = rank_loader(
        data_dir, "train", cfg.batch_size, teacher.cfg.max_len, ctx, shuffle=True, seed=cfg.loop.seed,
        num_workers=cfg.num_workers, remainder="drop",
    )  # fmt: skip
    valid = EvalProtocol.validation(cfg.loop.seed, cfg.eval_users, cfg.eval_negatives, cfg.eval_protocol)

    def validate(m: SASRec) -> dict[str, float]:
        kw = {
            "user_items": user_items,
            "num_users": cat.num_users,
            "batch_size": cfg.eval_batch_size,
            "ctx": ctx,
        }
        return evaluate_model(m, data_dir, valid, **kw)

    meta = cat.identity()
    source = cat.manifest.get("source")
    meta["dataset"] = source.get("dataset") if isinstance(source, dict) else source
    state = train_teacher(
        teacher,
        train,
        validate,
        cfg=cfg,
        ctx=ctx,
        out_dir=out_dir,
        meta=meta,
        reporter=reporter,
        run_file=run_file,
    )
    return state
