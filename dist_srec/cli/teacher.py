"""`dist-srec pretrain-teacher` and `dist-srec evaluate-teacher`: flags to configs, then the library.

    dist-srec pretrain-teacher --data data/ml-1m --out runs/teacher-ml-1m [--epochs 200 ...]
    dist-srec evaluate-teacher --ckpt runs/teacher-ml-1m/best --data data/ml-1m --protocol both

`pretrain-teacher` trains (or resumes) into OUT (OUT/best is the teacher that LLM-SRec loads), then
evaluates OUT/best on the test split with both protocols and writes OUT/results.json.
"""

from __future__ import annotations

import argparse
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from dist_srec.inference.evaluate import evaluate_teacher, evaluate_teacher_run
from dist_srec.models.sasrec import SASRecConfig
from dist_srec.train.loop_types import LoopConfig
from dist_srec.train.teacher import TeacherTrainConfig, pretrain_teacher, teacher_loop

_LOOP_SKIP = {"betas", "resume", "progress"}
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
    for f in fields(TeacherTrainConfig):
        if f.name != "loop":
            p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), help=f"default {f.default}")
    loop = teacher_loop()
    for f in fields(LoopConfig):
        if f.name not in _LOOP_SKIP:
            value = getattr(loop, f.name)
            p.add_argument(f"--{f.name.replace('_', '-')}", type=type(value), help=f"loop: default {value}")
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

    def given(names: Any) -> dict[str, Any]:
        return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}

    loop_kw = given(f.name for f in fields(LoopConfig) if f.name not in _LOOP_SKIP)
    loop = replace(teacher_loop(), **loop_kw, resume=not args.no_resume, progress=not args.no_progress)
    kw = given(f.name for f in fields(TeacherTrainConfig) if f.name != "loop")
    return model, TeacherTrainConfig(loop=loop, **kw)


def pretrain_teacher_cli(args: argparse.Namespace) -> int:
    model, cfg = teacher_configs(args)
    state = pretrain_teacher(args.data, args.out, model=model, cfg=cfg)
    print(f"teacher: {state.epoch} epochs, stopped: {state.stopped}, best valid {cfg.loop.select_metric} "
          f"{state.best_metric:.4f} at step {state.best_step}; checkpoint {args.out}/best")  # fmt: skip
    if not args.no_final_eval:
        _print_records(evaluate_teacher_run(args.data, args.out, cfg))
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
