"""`dist-srec train`, `dist-srec evaluate`, `dist-srec recommend` for LLM-SRec: flags to configs, then
the library (`dist_srec.train.srec_train`, `dist_srec.inference`).

    dist-srec train --data data/ml-1m --teacher runs/teacher/best --llm smollm2 --out runs/srec
    dist-srec evaluate --ckpt runs/srec/best [--split test --shuffle-history]
    dist-srec recommend --ckpt runs/srec/best --user 42
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dist_srec.eval.compare import format_report
from dist_srec.inference.evaluate import evaluate_srec
from dist_srec.inference.recommend import recommend
from dist_srec.models.llmsrec import LLMSRecConfig
from dist_srec.models.lm_config import COMPILE_SCOPES, LLMConfig
from dist_srec.models.losses import LossConfig
from dist_srec.models.prompts import PromptConfig
from dist_srec.train.loop_types import LoopConfig
from dist_srec.train.srec_train import SRecRunConfig, train_srec


def add_srec_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train LLM-SRec (frozen LLM + frozen teacher; resumes from OUT/last)")
    p.add_argument("--data", required=True, help="prepared data directory")
    p.add_argument("--teacher", required=True, help="teacher checkpoint (pretrain-teacher OUT/best)")
    p.add_argument("--llm", default="smollm2", help="local Hugging Face causal LM dir, 'smollm2' or 'tiny'")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    p.add_argument("--num-layers", type=int, help="keep only the first k LM layers (debug)")
    p.add_argument(
        "--activation-checkpointing", action="store_true", help="recompute LM layers in the backward"
    )
    p.add_argument("--compile-layers", action="store_true", help="torch.compile the LM decoder layers")
    p.add_argument("--compile-scope", choices=COMPILE_SCOPES, default="layers",
                   help="with --compile-layers: whole layers, or only their MLP and norms")  # fmt: skip
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--lr-decay", type=float, default=0.95, help="per validation round")
    p.add_argument("--batch-size", type=int, default=20, help="users per step and rank")
    p.add_argument("--num-negatives", type=int, default=3)
    p.add_argument("--in-batch-negatives", action="store_true")
    p.add_argument("--no-distill", action="store_true", help="ablation: no distillation")
    p.add_argument("--no-uniformity", action="store_true", help="ablation: no uniformity")
    p.add_argument("--title-max-tokens", type=int, default=32)
    p.add_argument("--eval-users", type=int, default=1000, help="validation user subset (0 = all)")
    p.add_argument("--eval-negatives", type=int, default=99, help="validation: sampled negatives per user")
    p.add_argument("--eval-every-steps", type=int, default=0, help="0 = every epoch")
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--max-steps", type=int, default=0)
    p.add_argument("--time-budget-s", type=float, default=0.0)
    p.add_argument("--save-every-steps", type=int, default=0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--mmap-threshold-bytes", type=int,
                   help="fix glibc's mmap threshold (e.g. 131072): less host RSS, slower LM passes")  # fmt: skip
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=train_cli)

    e = sub.add_parser("evaluate", help="evaluate LLM-SRec next to its teacher (sampled 1+99 and full)")
    e.add_argument("--ckpt", required=True, help="LLM-SRec checkpoint (train OUT/best)")
    e.add_argument("--data", help="prepared data dir (default: the one the checkpoint was trained on)")
    e.add_argument("--split", default="test", choices=["valid", "test"])
    e.add_argument("--eval-users", type=int, default=0, help="seeded user subset (0 = all)")
    e.add_argument("--num-negatives", type=int, default=99)
    e.add_argument("--seed", type=int, default=42)
    e.add_argument("--shuffle-history", action="store_true", help="also evaluate with shuffled histories")
    e.add_argument("--exclude-history", action="store_true", help="full ranking: drop history items")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--out", help="report JSON (default CKPT/../eval-<split>.json)")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=evaluate_cli)

    r = sub.add_parser("recommend", help="top-K titles for a user id or an ad-hoc title history")
    r.add_argument("--ckpt", required=True)
    who = r.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a user id as in the source data")
    who.add_argument("--history", help='titles separated by ";", oldest first')
    r.add_argument("--k", type=int, default=10)
    r.add_argument("--data")
    r.set_defaults(func=recommend_cli)


def run_config(args: argparse.Namespace) -> Any:
    loss = LossConfig(
        num_negatives=args.num_negatives, in_batch_negatives=args.in_batch_negatives,
        distill=not args.no_distill, uniformity=not args.no_uniformity,
    )  # fmt: skip
    loop = LoopConfig(
        epochs=args.epochs, lr=args.lr, lr_decay=args.lr_decay, eval_every_steps=args.eval_every_steps,
        patience=args.patience, max_steps=args.max_steps, time_budget_s=args.time_budget_s,
        save_every_steps=args.save_every_steps, seed=args.seed, resume=not args.no_resume,
        progress=not args.no_progress,
    )  # fmt: skip
    return SRecRunConfig(
        data=args.data, teacher=args.teacher, out=args.out,
        llm=LLMConfig(path=args.llm, dtype=args.dtype, num_layers=args.num_layers,
                      activation_checkpointing=args.activation_checkpointing, compile_layers=args.compile_layers,
                      compile_scope=args.compile_scope),
        model=LLMSRecConfig(loss=loss, prompts=PromptConfig(title_max_tokens=args.title_max_tokens), seed=args.seed),
        loop=loop, batch_size=args.batch_size, num_workers=args.num_workers, eval_users=args.eval_users,
        eval_negatives=args.eval_negatives, mmap_threshold_bytes=args.mmap_threshold_bytes,
    )  # fmt: skip


def train_cli(args: argparse.Namespace) -> int:

    cfg = run_config(args)
    st = train_srec(cfg)
    print(f"llm-srec: {st.global_step} steps, stopped: {st.stopped}, best valid {cfg.loop.select_metric} "
          f"{st.best_metric:.4f} at step {st.best_step}; checkpoint {cfg.out}/best")  # fmt: skip
    return 0


def evaluate_cli(args: argparse.Namespace) -> int:

    out = args.out or Path(args.ckpt).resolve().parent / f"eval-{args.split}.json"
    doc = evaluate_srec(
        args.ckpt, data=args.data, split=args.split, num_users=args.eval_users, num_negatives=args.num_negatives,
        seed=args.seed, shuffle_history=args.shuffle_history, exclude_history=args.exclude_history,
        batch_size=args.batch_size, out=out, progress=not args.no_progress,
    )  # fmt: skip
    print(format_report(doc["report"]))
    print(f"wrote {out}")
    return 0


def recommend_cli(args: argparse.Namespace) -> int:

    history = [t for t in args.history.split(";")] if args.history is not None else None
    recs = recommend(args.ckpt, user=args.user, history=history, k=args.k, data=args.data)
    who = f"user {args.user}" if args.user is not None else "the given history"
    print(f"top {args.k} for {who}:")
    for r in recs:
        print(f"{r.rank:3d}. {r.title}  (item {r.item_id}, score {r.score:.4f})")
    return 0
