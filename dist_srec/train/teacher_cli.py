"""`dist-srec pretrain-teacher` and `dist-srec evaluate-teacher`: wire a prepared data dir to the loop.

    dist-srec pretrain-teacher --data data/ml-1m --out runs/teacher-ml-1m [--epochs 200 ...]
    dist-srec evaluate-teacher --ckpt runs/teacher-ml-1m/best --data data/ml-1m --protocol both

`pretrain_teacher` trains (or resumes) into OUT (OUT/best is the teacher that LLM-SRec loads), then
evaluates OUT/best on the test split with both protocols and writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dist_srec.data.loader import rank_loader
from dist_srec.eval.metrics import finalize
from dist_srec.eval.protocols import (
    EvalProtocol,
    UserItems,
    all_reduce_sums,
    evaluate_full,
    evaluate_sampled,
    result_record,
    write_results,
)
from dist_srec.models.sasrec import SASRec, SASRecConfig
from dist_srec.train.checkpoint import model_sha256
from dist_srec.train.context import TrainContext
from dist_srec.train.loop import Reporter
from dist_srec.train.teacher import TeacherTrainConfig, TrainState, load_teacher, train_teacher


def max_history(user_items: UserItems) -> int:
    """The longest user row: an eval loader at this width sees every history whole."""
    return int(np.diff(user_items[0]).max(initial=1))


def evaluate_model(
    model: SASRec,
    data_dir: str | Path,
    protocol: EvalProtocol,
    *,
    user_items: UserItems,
    num_users: int,
    batch_size: int = 256,
    ctx: TrainContext | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Metrics (means, reduced over ranks) of a teacher on one split under one protocol."""
    ctx = ctx or TrainContext()
    model.eval()
    width = max_history(user_items) if protocol.protocol == "full" else model.cfg.max_len
    batches = rank_loader(data_dir, protocol.split, batch_size, width, ctx, shuffle=False, remainder="pad")
    show = progress and ctx.is_main
    if protocol.protocol == "sampled":
        sums = evaluate_sampled(
            lambda b, cands: model.score(b["history"].to(ctx.device), cands.to(ctx.device)),
            batches,
            user_items=user_items,
            num_items=model.cfg.num_items,
            num_users=num_users,
            protocol=protocol,
            progress=show,
        )
    else:
        sums = evaluate_full(
            lambda b: model.user_vector(b["history"].to(ctx.device)),
            model.item_embeddings().detach(),
            batches,
            num_users=num_users,
            protocol=protocol,
            progress=show,
        )
    return finalize(all_reduce_sums(sums))


def pretrain_teacher(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    model: dict[str, Any] | None = None,
    cfg: TeacherTrainConfig | None = None,
    ctx: TrainContext | None = None,
    final_eval: bool = True,
    reporter: Reporter | None = None,
) -> TrainState:
    """Train the teacher on a prepared data dir (every rank calls this), then evaluate OUT/best on test.

    `reporter` is passed to the loop (e.g. `ray.train.report` under Ray Train).
    """
    from dist_srec.data.catalog import Catalog

    cfg, ctx = cfg or TeacherTrainConfig(), ctx or TrainContext()
    cat = Catalog.load(data_dir)
    user_items = cat.user_items()
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every run
        teacher = SASRec(SASRecConfig(num_items=cat.num_items, **(model or {})))
    train = rank_loader(
        data_dir, "train", cfg.batch_size, teacher.cfg.max_len, ctx, shuffle=True, seed=cfg.seed,
        num_workers=cfg.num_workers, remainder="drop",
    )  # fmt: skip
    valid = EvalProtocol(
        protocol="sampled",
        split="valid",
        seed=cfg.seed,
        num_users=cfg.eval_users,
        num_negatives=cfg.eval_negatives,
    )

    def validate(m: SASRec) -> dict[str, float]:
        kw = {
            "user_items": user_items,
            "num_users": cat.num_users,
            "batch_size": cfg.eval_batch_size,
            "ctx": ctx,
        }
        return evaluate_model(m, data_dir, valid, **kw)

    meta = {"num_items": cat.num_items, "num_users": cat.num_users, "manifest_sha256": cat.manifest_sha256}
    source = cat.manifest.get("source")
    meta["dataset"] = source.get("dataset") if isinstance(source, dict) else source
    state = train_teacher(
        teacher, train, validate, cfg=cfg, ctx=ctx, out_dir=out_dir, meta=meta, reporter=reporter
    )
    if final_eval:
        evaluate_teacher(
            Path(out_dir) / "best", data_dir, out=Path(out_dir) / "results.json", seed=cfg.seed, ctx=ctx,
            num_negatives=cfg.eval_negatives, progress=cfg.progress,
        )  # fmt: skip
    return state


def evaluate_teacher(
    ckpt: str | Path,
    data_dir: str | Path,
    *,
    split: str = "test",
    protocols: tuple[str, ...] = ("sampled", "full"),
    exclude_history: tuple[bool, ...] = (False, True),
    num_users: int = 0,
    num_negatives: int = 99,
    seed: int = 42,
    batch_size: int = 256,
    out: str | Path | None = None,
    ctx: TrainContext | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate a teacher checkpoint; one record per protocol (full: per exclusion flag); rank 0 writes `out`."""
    from dist_srec.data.catalog import Catalog

    ctx = ctx or TrainContext()
    cat = Catalog.load(data_dir)
    model, _ = load_teacher(ckpt, num_items=cat.num_items)
    model.to(ctx.device)
    user_items = cat.user_items()
    records = []
    for name in protocols:
        for excl in exclude_history if name == "full" else (False,):
            proto = EvalProtocol(
                protocol=name, split=split, seed=seed, num_users=num_users, exclude_history=excl,
                num_negatives=num_negatives,
            )  # fmt: skip
            metrics = evaluate_model(
                model, data_dir, proto, user_items=user_items, num_users=cat.num_users, batch_size=batch_size,
                ctx=ctx, progress=progress,
            )  # fmt: skip
            counts = {"num_users": cat.num_users, "num_items": cat.num_items}
            record = result_record(
                metrics, proto, model="sasrec", checkpoint=str(ckpt), checkpoint_sha256=model_sha256(ckpt),
                manifest_sha256=cat.manifest_sha256, counts=counts,
            )  # fmt: skip
            records.append(record)
    if out is not None and ctx.is_main:
        write_results(out, records)
    return records


# ------------------------------------------------------------------------------------------- CLI
_MODEL_FLAGS = {
    "hidden": int, "num_blocks": int, "num_heads": int, "dropout": float, "attn_dropout": float, "max_len": int,
}  # fmt: skip


def add_teacher_commands(sub: argparse._SubParsersAction) -> None:
    """Register `pretrain-teacher` and `evaluate-teacher` on a `dist-srec` subparsers object."""
    p = sub.add_parser("pretrain-teacher", help="train the SASRec teacher (resumes from OUT/last)")
    p.add_argument("--data", required=True, help="prepared data directory (dist-srec prepare)")
    p.add_argument(
        "--out", required=True, help="run directory: OUT/best (the teacher), OUT/last, OUT/results.json"
    )
    for name, typ in _MODEL_FLAGS.items():
        p.add_argument(
            f"--{name.replace('_', '-')}", type=typ, help=f"model: {name} (default {_default(name)})"
        )
    skip = {"betas", "resume", "progress"}
    for f in fields(TeacherTrainConfig):
        if f.name not in skip:
            p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), help=f"default {f.default}")
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT/last exists")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-final-eval", action="store_true", help="skip the test evaluation of OUT/best")
    p.set_defaults(func=pretrain_teacher_cli)

    e = sub.add_parser("evaluate-teacher", help="evaluate a teacher checkpoint (sampled and/or full ranking)")
    e.add_argument("--ckpt", required=True, help="checkpoint directory (e.g. OUT/best)")
    e.add_argument("--data", required=True)
    e.add_argument("--split", default="test", choices=["valid", "test"])
    e.add_argument("--protocol", default="both", choices=["sampled", "full", "both"])
    e.add_argument(
        "--exclude-history", default="both", choices=["yes", "no", "both"], help="full ranking only"
    )
    e.add_argument("--eval-users", type=int, default=0, help="seeded user subset (0 = all)")
    e.add_argument("--num-negatives", type=int, default=99, help="sampled protocol: negatives per user")
    e.add_argument("--seed", type=int, default=42)
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--out", help="results JSON (default CKPT/../results-<split>.json)")
    e.set_defaults(func=evaluate_teacher_cli)


def _default(name: str) -> Any:
    return next(f.default for f in fields(SASRecConfig) if f.name == name)


def teacher_configs(args: argparse.Namespace) -> tuple[dict[str, Any], TeacherTrainConfig]:
    """(model overrides, training config) from `pretrain-teacher` flags; unset flags keep defaults."""
    model = {k: getattr(args, k) for k in _MODEL_FLAGS if getattr(args, k, None) is not None}
    kw = {
        f.name: getattr(args, f.name)
        for f in fields(TeacherTrainConfig)
        if getattr(args, f.name, None) is not None
    }
    return model, TeacherTrainConfig(**kw, resume=not args.no_resume, progress=not args.no_progress)


def pretrain_teacher_cli(args: argparse.Namespace) -> int:
    model, cfg = teacher_configs(args)
    state = pretrain_teacher(args.data, args.out, model=model, cfg=cfg, final_eval=not args.no_final_eval)
    print(f"teacher: {state.epoch} epochs, stopped: {state.stopped}, best valid {cfg.select_metric} "
          f"{state.best_metric:.4f} at step {state.best_step}; checkpoint {args.out}/best")  # fmt: skip
    if not args.no_final_eval:
        _print_records(json.loads((Path(args.out) / "results.json").read_text()))
    return 0


def evaluate_teacher_cli(args: argparse.Namespace) -> int:
    protocols = ("sampled", "full") if args.protocol == "both" else (args.protocol,)
    excl = {"yes": (True,), "no": (False,), "both": (False, True)}[args.exclude_history]
    out = args.out or Path(args.ckpt).resolve().parent / f"results-{args.split}.json"
    records = evaluate_teacher(
        args.ckpt, args.data, split=args.split, protocols=protocols, exclude_history=excl,
        num_users=args.eval_users, num_negatives=args.num_negatives, seed=args.seed, batch_size=args.batch_size, out=out,
    )  # fmt: skip
    _print_records(records)
    print(f"wrote {out}")
    return 0


def _print_records(records: list[dict[str, Any]]) -> None:
    for r in records:
        p = r["protocol"]
        name = p["protocol"] + (
            " (history excluded)" if p["protocol"] == "full" and p["exclude_history"] else ""
        )
        shown = "  ".join(f"{k} {v:.4f}" for k, v in sorted(r["metrics"].items()))
        print(f"{p['split']} {name}: {shown}  [{r['counts']['evaluated_users']} users]")


__all__ = ["add_teacher_commands", "evaluate_teacher", "pretrain_teacher"]
