"""The one training loop: epochs over a per-rank loader, validation rounds, early stopping, learning-rate
decay, a time budget, atomic `last`/`best` checkpoints with the data cursor, and resume.

It runs alone (world size 1) or on every rank under Ray Train / torchrun unchanged: a `TrainTask`
says what is trained and how its loss is computed; the loop does everything else.

    per step:   loss = task.loss(batch, gen_(seed, rank, step)); stepper.backward(loss); stepper.step()
    per round:  metrics = validate(task)  (identical on every rank); keep the best by
                `select_metric`; lr <- lr * lr_decay; stop after `patience` rounds without gain
    checkpoint: out/last = weights + optimizer + RNG + TrainState + every rank's loader cursor
                out/best = weights + config (+ the validation metrics that made it best)

The backward pass and the optimizer step go through a `Stepper` (`dist_srec.train.stepper`): torch
Adam over `task.trainable()` by default, or what `task.make_stepper(adam)` returns (e.g. a DeepSpeed
engine that owns the optimizer). A task whose logs hold "tokens" (prompt tokens this rank processed in
the step) gets tokens and tokens/s reported beside samples/s: summed over ranks with one all-reduce
per step, plus this rank's own rate (`tokens_per_s_rank`).

Only rank 0 writes files (every rank computes what is written: a sharded stepper gathers it); at
every `last` save all ranks also check that the trained weights are bitwise identical across ranks
(data-parallel replicas) and raise `CheckpointError` together if not. `reporter(metrics,
checkpoint_dir)` is called on every rank at the same points (every `log_every_steps` steps, and after
each `last` save), so a Ray Train reporter can use it as the barrier it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm import tqdm

from dist_srec.errors import CheckpointError, ConfigError, OutputBusyError, TrainingError
from dist_srec.io import RUN_FILE, clean_stale_temporaries, exclusive_output, recover_atomic, write_run_file
from dist_srec.parallel.context import TrainContext
from dist_srec.storage import RunDir
from dist_srec.train import checkpoint as ckpt_io
from dist_srec.train.loop_types import (
    BatchLoader,
    LoopConfig,
    Reporter,
    TrainState,
    TrainTask,
    Validate,
    step_generator,
)
from dist_srec.train.metric_logging import MultiLogger
from dist_srec.train.run_log import interactive, mean_over_ranks, peak_memory_gb, progress_line
from dist_srec.train.stepper import Stepper, TorchStepper


def weights_digest(state: Mapping[str, Tensor]) -> str:
    """sha256 over a state dict's names and tensor bytes: equal digests = bitwise-equal replicas."""
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _gather_cursors(loader: BatchLoader, ctx: TrainContext, task: TrainTask) -> list[dict]:
    """Every rank's loader cursor; with several ranks also checks that the trained weights are
    bitwise identical on every rank (data-parallel replicas), raising on all ranks if not."""
    if ctx.world_size <= 1 or not dist.is_initialized():
        return [loader.state_dict()]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, (loader.state_dict(), weights_digest(task.state_dict())))
    digests = [d for _, d in out]
    if len(set(digests)) > 1:
        raise CheckpointError(
            f"the trained weights differ across ranks (sha256 prefixes {[d[:12] for d in digests]}): the "
            "data-parallel replicas diverged; gradients were not averaged identically on every rank"
        )
    return [c for c, _ in out]


class Trainer:
    """Run a `TrainTask` over a loader; see the module docstring."""

    def __init__(
        self,
        task: TrainTask,
        loader: BatchLoader,
        validate: Validate,
        *,
        cfg: LoopConfig,
        ctx: TrainContext,
        out_dir: str | Path,
        reporter: Reporter | None = None,
        run_file: Mapping[str, Any] | None = None,
    ):
        self.task, self.loader, self.validate = task, loader, validate
        self.run = RunDir(out_dir)  # OUT, or the local mirror of a URI (`dist_srec.storage`)
        self.cfg, self.ctx, self.out, self.reporter = cfg, ctx, self.run.local, reporter
        self.run_file = run_file
        task.setup(ctx)
        adam = torch.optim.Adam(task.trainable(), lr=cfg.lr, betas=cfg.betas)
        make = getattr(task, "make_stepper", None)
        # tasks not wrapped in DDP may average gradients in `sync_grads`
        self.opt: Stepper = (
            make(adam) if make is not None else TorchStepper(adam, getattr(task, "sync_grads", None))
        )
        self.state = TrainState(lr=cfg.lr)
        self.metrics: MultiLogger | None = None  # rank 0, while `fit` runs
        torch.manual_seed(cfg.seed + ctx.rank)  # dropout; replaced by the saved RNG state on resume

    @property
    def last_dir(self) -> Path:
        return self.out / "last"

    @property
    def best_dir(self) -> Path:
        return self.out / "best"

    # ------------------------------------------------------------------------------ checkpoints
    def maybe_resume(self) -> bool:
        """Load `out/last` if it exists (and `cfg.resume`); True if resumed."""
        if not (self.cfg.resume and (self.last_dir / ckpt_io.CONFIG_FILE).is_file()):
            return False
        ck = ckpt_io.load_checkpoint(self.last_dir, with_train_state=True)
        self.task.check_checkpoint(ck.config, self.last_dir)
        self.task.load_state_dict(ck.model_state)
        if ck.optimizer is not None:
            self.opt.load_state_dict(ck.optimizer)
        ts = dict(ck.train_state or {})
        cursors = ts.pop("loader", None)
        self.state = TrainState(**ts)
        if cursors:
            if len(cursors) != self.ctx.world_size and any(any(c["consumed"]) for c in cursors):
                raise CheckpointError(
                    f"{self.last_dir} was saved mid-epoch by {len(cursors)} ranks; resume it with "
                    f"{len(cursors)} ranks (this run has {self.ctx.world_size}), or from an epoch boundary"
                )
            self.loader.load_state_dict(
                cursors[self.ctx.rank] if len(cursors) == self.ctx.world_size else cursors[0]
            )
        for g in self.opt.param_groups:
            g["lr"] = self.state.lr
        ckpt_io.set_rng_state(ck.rng if self.ctx.rank == 0 else None)
        return True

    def save_last(self) -> None:
        cursors = _gather_cursors(self.loader, self.ctx, self.task)
        weights, optimizer = self.task.state_dict(), self.opt.state_dict()  # every rank (may gather)
        if self.ctx.is_main:
            ckpt_io.save_checkpoint(
                self.last_dir,
                model_state=weights,
                config=self.task.config_json(),
                optimizer=optimizer,
                train_state={**asdict(self.state), "loader": cursors},
                rng=ckpt_io.rng_state(),
            )
        self._report({}, self.last_dir)
        if self.ctx.is_main:
            self.run.publish()  # a remote OUT: the checkpoint and the logs so far

    def _report(self, metrics: dict[str, float], checkpoint: Path | None) -> dict[str, float]:
        """On every rank at the same points: hand this rank's metrics to the reporter, and log their mean
        over ranks (rank 0); returns the mean."""
        st = self.state
        mine = {"step": st.global_step, "epoch": st.epoch, "lr": st.lr, **metrics,
                "peak_memory_gb": peak_memory_gb(self.ctx.device)}  # fmt: skip
        out = mean_over_ranks(mine, self.ctx)
        if self.metrics is not None:
            self.metrics.log({**out, "checkpoint": checkpoint is not None}, st.global_step)
        if self.reporter is not None:
            self.reporter(mine, checkpoint)
        return out

    # ------------------------------------------------------------------------------ validation
    def _validate_round(self, train_logs: dict[str, float]) -> bool:
        """Validate, keep the best, decay lr, count patience; True if training should stop early."""
        self.task.module.eval()
        metrics = self.validate(self.task)
        self.task.module.train()
        st = self.state
        if self.cfg.select_metric not in metrics:
            raise ConfigError(f"select_metric '{self.cfg.select_metric}' is not among {sorted(metrics)}")
        score = float(metrics[self.cfg.select_metric])
        if not math.isfinite(score):
            raise TrainingError(
                f"validation {self.cfg.select_metric} is {score} at step {st.global_step}: the model's scores "
                f"are not finite; nothing was saved as best (last good checkpoint: {self.last_dir})"
            )
        self._report({f"valid_{k}": float(v) for k, v in metrics.items()}, None)
        improved = score > st.best_metric
        if improved:
            st.best_metric, st.best_step, st.bad_rounds = score, st.global_step, 0
            weights = self.task.state_dict()  # every rank (a sharded stepper gathers)
            if self.ctx.is_main:
                cfg = {**self.task.config_json(), "validation": {"step": st.global_step, **metrics}}
                ckpt_io.save_checkpoint(self.best_dir, model_state=weights, config=cfg)
        else:
            st.bad_rounds += 1
        st.history.append(
            {"epoch": st.epoch, "step": st.global_step, "elapsed_s": round(st.elapsed_s, 2), "lr": st.lr,
             **train_logs, **metrics, "improved": improved}
        )  # fmt: skip
        st.lr *= self.cfg.lr_decay
        for g in self.opt.param_groups:
            g["lr"] = st.lr
        if self.ctx.is_main:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "count")
            tqdm.write(f"[{self.task.name}] step {st.global_step}: valid {shown}{' *' if improved else ''}")
        return self.cfg.patience > 0 and st.bad_rounds >= self.cfg.patience

    # ------------------------------------------------------------------------------ loop
    def _out_of_time(self) -> bool:
        return bool(self.cfg.time_budget_s) and self.ctx.agree(self.state.elapsed_s >= self.cfg.time_budget_s)

    def _step(self, batch: Mapping[str, Tensor]) -> tuple[dict[str, float], tuple[int, int] | None]:
        """One optimizer step; returns the logs and (this rank's, all ranks') prompt tokens, if counted."""
        batch = {k: v.to(self.ctx.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        gen = step_generator(self.cfg.seed, self.ctx.rank, self.state.global_step)
        loss, logs = self.task.loss(batch, gen)
        self._require_finite("loss", loss.detach(), logs)
        self.opt.backward(loss)
        grads = [p.grad for p in self.task.trainable() if p.grad is not None]
        self._require_finite("gradient", torch.stack([g.detach().float().abs().sum() for g in grads]).sum()
                             if grads else torch.zeros(()), logs)  # fmt: skip
        if self.state.global_step < self.cfg.warmup_steps:  # the ramp's last step restores the full lr
            for g in self.opt.param_groups:
                g["lr"] = self.state.lr * (self.state.global_step + 1) / self.cfg.warmup_steps
        self.opt.step()
        self.state.global_step += 1
        self.state.samples += int(batch["mask"].sum()) * self.ctx.world_size
        tokens = None
        if "tokens" in logs:
            local = int(logs.pop("tokens"))
            tokens = (local, self._sum_over_ranks(local))
            self.state.tokens += tokens[1]
        return {"loss": float(loss.detach()), **logs}, tokens

    def _require_finite(self, what: str, value: Tensor, logs: dict[str, float]) -> None:
        """Raise `TrainingError` on every rank if `value` is not finite on any rank, before the optimizer
        step: the weights stay those of the last good step, and no checkpoint is written from this one."""
        if not self.ctx.agree(not bool(torch.isfinite(value).all())):
            return
        st = self.state
        terms = ", ".join(f"{k} {v:.4g}" for k, v in logs.items() if isinstance(v, float))
        raise TrainingError(
            f"non-finite {what} at step {st.global_step + 1} (epoch {st.epoch + 1}, lr {st.lr:g}; {terms}); "
            f"training stopped before the optimizer step. Lower --lr, or check the inputs; the last good "
            f"checkpoint is {self.last_dir}"
        )

    def _sum_over_ranks(self, n: int) -> int:
        if self.ctx.world_size <= 1 or not dist.is_initialized():
            return n
        t = torch.tensor(
            [n], dtype=torch.int64, device=self.ctx.device if self.ctx.device.type == "cuda" else "cpu"
        )
        dist.all_reduce(t)
        return int(t.item())

    def _run_epoch(self) -> str:
        """Run (the rest of) the current epoch; returns a stop reason, or "" at the epoch's end."""
        cfg, st = self.cfg, self.state
        self.loader.set_epoch(st.epoch)
        sums, done = st.epoch_sums, st.epoch_steps  # carried over a mid-epoch resume
        tokens = [0, 0]  # this epoch's prompt tokens: this rank's, all ranks'
        t_first = time.perf_counter()
        show = self.ctx.is_main and cfg.progress
        bar = tqdm(self.loader, desc=f"{self.task.name} epoch {st.epoch + 1}/{cfg.epochs}",
                   disable=not (show and interactive()), leave=False, dynamic_ncols=True)  # fmt: skip
        total = cfg.max_steps or cfg.epochs * len(self.loader)
        step0 = st.global_step
        t0 = time.perf_counter()
        for n, batch in enumerate(bar, start=1):
            logs, step_tokens = self._step(batch)
            now = time.perf_counter()
            st.elapsed_s, t0 = st.elapsed_s + now - t0, now
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            st.epoch_steps = done + n
            self._means = {f"train_{k}": v / st.epoch_steps for k, v in sums.items()}
            span = max(now - t_first, 1e-9)
            rates = {"samples_per_s": n * int(batch["mask"].numel()) * self.ctx.world_size / span}
            if step_tokens is not None:
                tokens = [tokens[0] + step_tokens[0], tokens[1] + step_tokens[1]]
                rates |= {
                    "tokens": st.tokens,
                    "tokens_per_s": tokens[1] / span,
                    "tokens_per_s_rank": tokens[0] / span,
                }
            bar.set_postfix({"loss": f"{self._means['train_loss']:.4f}", "samples/s": f"{rates['samples_per_s']:.2f}",
                             **({"tokens/s": f"{rates['tokens_per_s']:.0f}"} if step_tokens else {})})  # fmt: skip
            if st.global_step % cfg.log_every_steps == 0:
                out = self._report({**self._means, **rates}, None)
                if show and not interactive():
                    eta = (total - st.global_step) * span / max(st.global_step - step0, 1)
                    if cfg.time_budget_s:  # the budget ends the run first when it is shorter
                        eta = min(eta, max(cfg.time_budget_s - st.elapsed_s, 0.0))
                    print(progress_line(self.task.name, out, total_steps=total, epochs=cfg.epochs, eta_s=eta,
                                        memory_gb=out["peak_memory_gb"]), flush=True)  # fmt: skip
            if cfg.max_steps and st.global_step >= cfg.max_steps:
                return "max_steps"
            if cfg.eval_every_steps and st.global_step % cfg.eval_every_steps == 0:
                if self._validate_round(self._means):
                    return "early_stop"
                self.save_last()
            elif cfg.save_every_steps and st.global_step % cfg.save_every_steps == 0:
                self.save_last()
            if self._out_of_time():
                return "time_budget"
        return ""

    def fit(self) -> TrainState:
        """Train until `epochs`, `max_steps`, early stop or the time budget; returns the final state.

        The run always ends with a validation round at its last step (so `best` has seen the end
        state). A resumed run continues unless it had stopped early; larger `epochs`, `max_steps` or
        `time_budget_s` than the saved run's extend it.
        """
        with contextlib.ExitStack() as stack:
            self._take_output(stack)
            if self.ctx.is_main:
                stack.callback(self.run.publish)  # last, after the loggers have flushed
                self.metrics = stack.enter_context(
                    contextlib.closing(MultiLogger(self.out, self.cfg.metric_loggers))
                )
            return self._fit()

    def _take_output(self, stack: contextlib.ExitStack) -> None:
        """Rank 0 locks the output directory for the run (a second writer is refused on every rank),
        pulls a remote OUT into its mirror, finishes a checkpoint swap that a kill interrupted, and
        deletes stale temporaries; then the first rank of every other machine pulls its own mirror."""
        busy: OutputBusyError | None = None
        if self.ctx.is_main:
            try:
                stack.enter_context(exclusive_output(self.out, f"{self.task.name} training"))
            except OutputBusyError as e:
                busy = e
            else:
                self.run.pull()
                if self.run_file is not None:
                    write_run_file(self.out / RUN_FILE, self.run_file)
                for d in (self.last_dir, self.best_dir):
                    if recover_atomic(d):
                        tqdm.write(f"[{self.task.name}] recovered {d} from an interrupted save")
                    clean_stale_temporaries(d)
        if self.ctx.agree(busy is not None):
            raise busy or OutputBusyError(f"{self.out} is being written by another run (see rank 0's error)")
        self.ctx.barrier()
        if self.run.remote is not None and not self.ctx.is_main and self.ctx.local_rank == 0:
            self.run.pull()  # another machine: its own mirror (on rank 0's machine, already current)
        self.ctx.barrier()

    def _fit(self) -> TrainState:
        cfg = self.cfg
        resumed = self.maybe_resume()
        st = self.state
        if resumed and self.ctx.is_main:
            tqdm.write(f"[{self.task.name}] resumed from {self.run.out}/last at step {st.global_step} "
                       f"(epoch {st.epoch + 1}, {st.samples} samples seen)")  # fmt: skip
        if st.stopped == "early_stop":
            return st
        self._means: dict[str, float] = {}
        self.task.module.train()
        while True:
            if st.epoch >= cfg.epochs:
                reason = "epochs"
            elif cfg.max_steps and st.global_step >= cfg.max_steps:
                reason = "max_steps"
            elif self._out_of_time():
                reason = "time_budget"
            else:
                reason = self._run_epoch()
                if not reason:
                    st.epoch, st.epoch_sums, st.epoch_steps = st.epoch + 1, {}, 0
                    due = not cfg.eval_every_steps and st.epoch % cfg.eval_every_epochs == 0
                    if due and st.epoch < cfg.epochs and self._validate_round(self._means):
                        reason = "early_stop"
                    if not reason:
                        self.save_last()
                        continue
            break
        if reason != "early_stop" and (not st.history or st.history[-1]["step"] != st.global_step):
            self._validate_round(self._means)  # the end state is always validated once
        st.stopped = reason
        self.save_last()
        self.ctx.barrier()
        return st
