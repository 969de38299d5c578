"""Pre-training the SASRec teacher: one loop for a single process and for DDP under Ray Train.

Objective (SASRec; pmixer/SASRec.pytorch and LLM-SRec's teacher): for a train sample with left-padded
history s (width L) and target t, the positive at position l is the next item p_l (s shifted by one,
then t) and the negative n_l is drawn uniformly from items not in the user's window (s and t). With
h_l the model's output at position l and E the item table,

    loss = mean_l softplus(-<h_l, E[p_l]>) + mean_l softplus(<h_l, E[n_l]>)   over l with s_l != 0
           (+ l2_emb * ||E||_F)

optimised with Adam(lr 1e-3, betas (0.9, 0.98)). Validation (sampled NDCG@10 on the valid split by
default) runs every `eval_every` epochs; training stops after `patience` rounds without improvement,
or once `time_budget_s` is spent. Rank 0 writes `out/best` (the teacher: model.safetensors +
config.json) and `out/last` (plus optimizer, RNG, epoch, best metric and the data cursor of every
rank); a run restarted with the same `out` resumes from `out/last`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from dist_srec.errors import CheckpointError, ConfigError
from dist_srec.models.sasrec import SASRec, SASRecConfig
from dist_srec.train import checkpoint as ckpt_io
from dist_srec.train.context import TrainContext

CHECKPOINT_FORMAT = "dist-srec/sasrec-teacher"
CHECKPOINT_VERSION = 1


@dataclass(kw_only=True)
class TeacherTrainConfig:
    """`dist-srec pretrain-teacher`: optimisation, validation and checkpointing of the teacher."""

    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    l2_emb: float = 0.0
    """Weight of ||E||_F added to the loss (the reference's --l2_emb; 0 there by default)."""
    eval_every: int = 20
    """Epochs between validation rounds (and best-checkpoint updates)."""
    patience: int = 5
    """Validation rounds without improvement before stopping early (0 = never stop early)."""
    select_metric: str = "ndcg@10"
    eval_users: int = 10000
    """Validation users (seeded subset; 0 = all), as the papers' 10,000."""
    eval_negatives: int = 99
    """Sampled negatives per validation user (the papers: 99)."""
    eval_batch_size: int = 256
    num_workers: int = 0
    seed: int = 42
    time_budget_s: float = 0.0
    """Stop after the epoch in which this much training time has been spent (0 = no budget)."""
    save_every_steps: int = 0
    """Also write `last` every this many steps (0 = at epoch ends only)."""
    resume: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        def check(cond: bool, name: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"config field '{name}': {msg}")

        for name in ("epochs", "batch_size", "eval_every", "eval_batch_size", "eval_negatives"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("patience", "eval_users", "num_workers", "save_every_steps"):
            check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas", f"bad {self.betas}")
        check(self.l2_emb >= 0, "l2_emb", f"must be >= 0, got {self.l2_emb}")
        check(self.time_budget_s >= 0, "time_budget_s", f"must be >= 0, got {self.time_budget_s}")


class BatchLoader(Protocol):
    """What the loop needs from a loader (`dist_srec.data.loader.ShardLoader` is one)."""

    def __iter__(self) -> Iterator[Mapping[str, Tensor]]: ...
    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


Validate = Callable[[SASRec], dict[str, float]]  # eval-mode model -> metrics, identical on all ranks


@dataclass
class TrainState:
    """Progress, saved in `last/train_state.json`."""

    epoch: int = 0
    """Epochs completed (the next epoch to run, 0-based)."""
    global_step: int = 0
    best_metric: float = -math.inf
    best_epoch: int = -1
    bad_rounds: int = 0
    elapsed_s: float = 0.0
    samples: int = 0
    stopped: str = ""
    """Why training ended: "", "epochs", "early_stop", "time_budget"."""
    history: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- loss
def sample_train_negatives(
    seen: Tensor, shape: tuple[int, int], num_items: int, gen: torch.Generator
) -> Tensor:
    """[B, L] items drawn uniformly from 1..N, redrawn while in the row's `seen` [B, S] (0s ignored).

    Redraws stop after 100 rounds (only reachable when a user has seen nearly the whole catalog).
    """
    neg = torch.randint(1, num_items + 1, shape, generator=gen)
    for _ in range(100):
        bad = (neg[:, :, None] == seen[:, None, :]).any(-1)
        n_bad = int(bad.sum())
        if n_bad == 0:
            break
        neg[bad] = torch.randint(1, num_items + 1, (n_bad,), generator=gen)
    return neg


def teacher_loss(
    model: torch.nn.Module, batch: Mapping[str, Tensor], num_items: int, gen: torch.Generator, max_len: int
) -> tuple[Tensor, int]:
    """The module docstring's BCE loss for one batch, and the number of positions it averages over.

    `model` may be DDP-wrapped: the logits come from its forward, so gradients are all-reduced.
    """
    hist = batch["history"][:, -max_len:]  # [B, L]
    target = batch["target"]
    valid = (hist != 0) & batch["mask"].bool()[:, None]
    pos = torch.cat([hist[:, 1:], target[:, None]], 1) * valid
    neg = (
        sample_train_negatives(torch.cat([hist, target[:, None]], 1), tuple(hist.shape), num_items, gen)
        * valid
    )
    logits = model(hist, torch.stack([pos, neg], -1))  # [B, L, 2]
    n = int(valid.sum())
    if n == 0:
        return logits.sum() * 0.0, 0
    pos_logit, neg_logit = logits[..., 0][valid], logits[..., 1][valid]
    loss = F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit))
    loss = loss + F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit))
    return loss, n


def _step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """Negative sampling RNG of one step: a function of (seed, rank, step), so resume replays it."""
    state = np.random.SeedSequence([seed, rank, step]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> 1))


# ----------------------------------------------------------------------------------- checkpoints
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
) -> tuple[SASRec, ckpt_io.Checkpoint]:
    """Rebuild a teacher from a checkpoint directory, checked against the catalog it will be used with.

    Raises `CheckpointError` when the checkpoint is not a teacher, or its item count or dimension differ
    from `num_items` / `hidden` (when given), or its tensors do not fit its own config.
    """
    ck = ckpt_io.load_checkpoint(path, with_train_state=with_train_state)
    if ck.config.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{ck.path} is not a SASRec teacher checkpoint (format {ck.config.get('format')!r})"
        )
    cfg = SASRecConfig(**ck.config["model"])
    if num_items is not None and cfg.num_items != num_items:
        raise CheckpointError(
            f"teacher checkpoint {ck.path} was trained on a catalog of {cfg.num_items} items, but this catalog "
            f"has {num_items}; train the teacher on this data (dist-srec pretrain-teacher) or use its catalog"
        )
    if hidden is not None and cfg.hidden != hidden:
        raise CheckpointError(
            f"teacher checkpoint {ck.path} has dimension D={cfg.hidden}, expected D={hidden}"
        )
    model = SASRec(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ck.model_state.items()}
    if expected != got:
        diff = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
        raise CheckpointError(
            f"teacher checkpoint {ck.path} does not match its config.json: tensors {diff[:5]}"
        )
    model.load_state_dict(ck.model_state)
    return model, ck


def _gather_cursors(loader: BatchLoader, ctx: TrainContext) -> list[dict]:
    if ctx.world_size <= 1 or not dist.is_initialized():
        return [loader.state_dict()]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, loader.state_dict())
    return out


# ------------------------------------------------------------------------------------------- loop
class TeacherTrainer:
    """The teacher loop. Build it with a model, a train loader, a validation function and a context."""

    def __init__(
        self,
        model: SASRec,
        loader: BatchLoader,
        validate: Validate,
        *,
        cfg: TeacherTrainConfig,
        ctx: TrainContext,
        out_dir: str | Path,
        meta: Mapping[str, Any] | None = None,
    ):
        self.cfg, self.ctx, self.out = cfg, ctx, Path(out_dir)
        self.model = model.to(ctx.device)
        self.loader, self.validate = loader, validate
        self.meta = dict(meta or {})
        self.num_items = model.cfg.num_items
        self.ddp = ctx.wrap(self.model)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.state = TrainState()
        torch.manual_seed(cfg.seed + ctx.rank)  # dropout; replaced by the saved RNG state on resume

    @property
    def last_dir(self) -> Path:
        return self.out / "last"

    @property
    def best_dir(self) -> Path:
        return self.out / "best"

    def _config_json(self) -> dict:
        return teacher_config_json(self.model.cfg, catalog=self.meta, train=asdict(self.cfg))

    def maybe_resume(self) -> bool:
        """Load `out/last` if it exists (and `cfg.resume`); True if resumed."""
        if not (self.cfg.resume and (self.last_dir / ckpt_io.CONFIG_FILE).is_file()):
            return False
        model, ck = load_teacher(
            self.last_dir, num_items=self.num_items, hidden=self.model.cfg.hidden, with_train_state=True
        )
        if asdict(model.cfg) != asdict(self.model.cfg):
            raise CheckpointError(
                f"{self.last_dir} holds a model with config {asdict(model.cfg)}, not {asdict(self.model.cfg)}"
            )
        self.model.load_state_dict(model.state_dict())
        if ck.optimizer is not None:
            self.opt.load_state_dict(ck.optimizer)
        ts = dict(ck.train_state or {})
        cursors = ts.pop("loader", None)
        self.state = TrainState(**ts)
        if cursors:
            self.loader.load_state_dict(
                cursors[self.ctx.rank] if len(cursors) == self.ctx.world_size else cursors[0]
            )
        ckpt_io.set_rng_state(ck.rng if self.ctx.rank == 0 else None)
        return True

    def save_last(self) -> None:
        cursors = _gather_cursors(self.loader, self.ctx)
        if self.ctx.is_main:
            ckpt_io.save_checkpoint(
                self.last_dir,
                model_state=self.model.state_dict(),
                config=self._config_json(),
                optimizer=self.opt.state_dict(),
                train_state={**asdict(self.state), "loader": cursors},
                rng=ckpt_io.rng_state(),
            )

    def _validate_round(self, epoch_loss: float) -> bool:
        """Validate, keep the best, count patience; True if training should stop early."""
        self.model.eval()
        metrics = self.validate(self.model)
        self.model.train()
        st, score = self.state, float(metrics[self.cfg.select_metric])
        improved = score > st.best_metric
        if improved:
            st.best_metric, st.best_epoch, st.bad_rounds = score, st.epoch, 0
            if self.ctx.is_main:
                cfg = {**self._config_json(), "validation": {"epoch": st.epoch, **metrics}}
                ckpt_io.save_checkpoint(self.best_dir, model_state=self.model.state_dict(), config=cfg)
        else:
            st.bad_rounds += 1
        rec = {
            "epoch": st.epoch,
            "step": st.global_step,
            "loss": epoch_loss,
            "elapsed_s": round(st.elapsed_s, 2),
        }
        st.history.append({**rec, **metrics, "improved": improved})
        if self.ctx.is_main:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "count")
            tqdm.write(f"epoch {st.epoch}: loss {epoch_loss:.4f} | valid {shown}{' *' if improved else ''}")
        return self.cfg.patience > 0 and st.bad_rounds >= self.cfg.patience

    def _run_epoch(self, epoch: int) -> float:
        """One (possibly resumed) epoch; returns its mean loss on this rank."""
        cfg, st = self.cfg, self.state
        self.loader.set_epoch(epoch)
        t0, total, count = time.perf_counter(), 0.0, 0
        t_epoch = t0
        bar = tqdm(
            self.loader,
            desc=f"teacher epoch {epoch + 1}/{cfg.epochs}",
            disable=not (self.ctx.is_main and cfg.progress),
            leave=False,
            dynamic_ncols=True,
        )
        for batch in bar:
            batch = {k: v.to(self.ctx.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
            gen = _step_generator(cfg.seed, self.ctx.rank, st.global_step)
            loss, _ = teacher_loss(self.ddp, batch, self.num_items, gen, self.model.cfg.max_len)
            if cfg.l2_emb > 0:
                loss = loss + cfg.l2_emb * self.model.item_emb.weight.norm()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            st.global_step += 1
            st.samples += int(batch["mask"].sum()) * self.ctx.world_size
            total, count = total + loss.item(), count + 1
            sps = count * cfg.batch_size * self.ctx.world_size / max(time.perf_counter() - t_epoch, 1e-9)
            bar.set_postfix(loss=f"{total / count:.4f}", samples_s=f"{sps:.0f}")
            if cfg.save_every_steps and st.global_step % cfg.save_every_steps == 0:
                st.elapsed_s += time.perf_counter() - t0
                t0 = time.perf_counter()
                self.save_last()
        st.elapsed_s += time.perf_counter() - t0
        return total / max(count, 1)

    def fit(self) -> TrainState:
        """Train until `epochs`, early stop or the time budget; returns the final state.

        A resumed run continues unless it had stopped early; a larger `epochs` or `time_budget_s`
        than the saved run's extends it.
        """
        cfg, st = self.cfg, self.state
        self.maybe_resume()
        st = self.state
        if st.stopped != "early_stop":
            st.stopped = ""
        self.model.train()
        while st.epoch < cfg.epochs and not st.stopped:
            if cfg.time_budget_s and self.ctx.agree(st.elapsed_s >= cfg.time_budget_s):
                st.stopped = "time_budget"
                break
            loss = self._run_epoch(st.epoch)
            st.epoch += 1
            out_of_time = bool(cfg.time_budget_s) and self.ctx.agree(st.elapsed_s >= cfg.time_budget_s)
            if (
                st.epoch % cfg.eval_every == 0 or st.epoch == cfg.epochs or out_of_time
            ) and self._validate_round(loss):
                st.stopped = "early_stop"
            elif out_of_time:
                st.stopped = "time_budget"
            self.save_last()
        if not st.stopped:
            st.stopped = "epochs"
        self.ctx.barrier()
        return st


def train_teacher(
    model: SASRec,
    loader: BatchLoader,
    validate: Validate,
    *,
    cfg: TeacherTrainConfig,
    ctx: TrainContext | None = None,
    out_dir: str | Path,
    meta: Mapping[str, Any] | None = None,
) -> TrainState:
    """Train (or resume) the teacher; see the module docstring. Every rank calls it with its own loader."""
    return TeacherTrainer(
        model, loader, validate, cfg=cfg, ctx=ctx or TrainContext(), out_dir=out_dir, meta=meta
    ).fit()
