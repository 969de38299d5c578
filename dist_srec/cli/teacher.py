"""`dist-srec pretrain-teacher` and `evaluate-teacher`: the SASRec teacher's run file and flags."""

from __future__ import annotations

from typing import Any

from jsonargparse import ArgumentParser, Namespace

from dist_srec.cli.command import Command, parser
from dist_srec.config import from_namespace
from dist_srec.errors import ConfigError
from dist_srec.inference.evaluate import evaluate_teacher, evaluate_teacher_run
from dist_srec.storage import run_dir_of
from dist_srec.train.teacher import TeacherRunConfig, run_teacher


def add_run_config(p: ArgumentParser) -> None:
    """Every field of `TeacherRunConfig` as a flag (`--data`, `--model.hidden`, `--train.loop.epochs`)."""
    p.add_class_arguments(TeacherRunConfig, None, fail_untyped=False)


def run_config(p: ArgumentParser, ns: Namespace) -> TeacherRunConfig:
    return from_namespace(TeacherRunConfig, p, ns)


def _pretrain_parser() -> ArgumentParser:
    p = parser("Pre-train the SASRec teacher on a prepared data dir (resumes from OUT/last); OUT/best is the "
               "teacher LLM-SRec loads, OUT/results.json its test evaluation, OUT/config.yaml the run file.", [
        "dist-srec pretrain-teacher --data runs/demo/data --out runs/teacher",
        "dist-srec pretrain-teacher --data data/ml-1m --out runs/t --train.loop.epochs 400 --train.loss sampled_softmax",
        "dist-srec pretrain-teacher --config runs/t/config.yaml   # replay (or resume) a run",
    ], run_file=True)  # fmt: skip
    add_run_config(p)
    return p


def _pretrain(p: ArgumentParser, ns: Namespace) -> int:
    run = run_config(p, ns)
    state = run_teacher(run)
    print(f"teacher: {state.epoch} epochs, stopped: {state.stopped}, best valid {run.train.loop.select_metric} "
          f"{state.best_metric:.4f} at step {state.best_step}; checkpoint {run.out}/best")  # fmt: skip
    if run.final_eval:
        print_records(evaluate_teacher_run(run.data, run.out, run.train))
    return 0


def _evaluate_parser() -> ArgumentParser:
    p = parser("Evaluate a teacher checkpoint (sampled 1+99 and/or full ranking).", [
        "dist-srec evaluate-teacher --ckpt runs/teacher/best --data runs/demo/data",
        "dist-srec evaluate-teacher --ckpt runs/teacher/best --data data/ml-1m --protocol full --exclude_history yes",
    ])  # fmt: skip
    p.add_argument("--ckpt", type=str, required=True, help="checkpoint directory (e.g. OUT/best)")
    p.add_argument("--data", type=str, required=True, help="prepared data dir")
    p.add_argument("--split", type=str, default="test", choices=["valid", "test"])
    p.add_argument("--protocol", type=str, default="both", choices=["sampled", "full", "both"])
    p.add_argument("--exclude_history", type=str, default="both", choices=["yes", "no", "both"],
                   help="full ranking: drop the user's history items (both: report each)")  # fmt: skip
    p.add_argument("--exclude_last", type=int, default=0,
                   help="with --exclude_history: drop only the last k history items (0 = all; HSTU's protocol: 200)")  # fmt: skip
    p.add_argument("--eval_users", type=int, default=0, help="seeded user subset (0 = all)")
    p.add_argument("--eval_negatives", type=int, default=99, help="sampled protocol: negatives per user")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--results", type=str | None, default=None,
                   help="results JSON file (default CKPT/../results-<split>.json)")  # fmt: skip
    return p


def _evaluate(p: ArgumentParser, a: Namespace) -> int:
    protocols = ("sampled", "full") if a.protocol == "both" else (a.protocol,)
    excl = {"yes": (True,), "no": (False,), "both": (False, True)}[a.exclude_history]
    if a.exclude_last and a.exclude_history == "no":
        raise ConfigError("--exclude_last needs --exclude_history yes or both")
    out = a.results or run_dir_of(a.ckpt) / f"results-{a.split}.json"
    records = evaluate_teacher(
        a.ckpt, a.data, split=a.split, protocols=protocols, exclude_history=excl, exclude_last=a.exclude_last,
        num_users=a.eval_users, num_negatives=a.eval_negatives, seed=a.seed, batch_size=a.batch_size, out=out,
    )  # fmt: skip
    print_records(records)
    print(f"wrote {out}")
    return 0


def print_records(records: list[dict[str, Any]]) -> None:
    for r in records:
        p = r["protocol"]
        what = f"last {p['exclude_last']} history items" if p.get("exclude_last") else "history"
        excluded = p["protocol"] == "full" and p["exclude_history"]
        name = p["protocol"] + (f" ({what} excluded)" if excluded else "")
        shown = "  ".join(f"{k} {v:.4f}" for k, v in sorted(r["metrics"].items()))
        print(f"{p['split']} {name}: {shown}  [{r['counts']['evaluated_users']} users]")


COMMANDS = [
    Command(
        "pretrain-teacher", "train the SASRec teacher (resumes from OUT/last)", _pretrain_parser, _pretrain
    ),
    Command("evaluate-teacher", "evaluate a teacher checkpoint", _evaluate_parser, _evaluate),
]
