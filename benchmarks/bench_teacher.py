"""Teacher benchmark: SASRec pre-training on ML-1M (or ML-100K) under a training-time budget, then
sampled (1 + 99) and full-catalog NDCG@10/20, HR@10/20 and MRR on the test split.

    .venv/bin/python benchmarks/bench_teacher.py                          # ML-1M, 40 min of training
    .venv/bin/python benchmarks/bench_teacher.py --dataset ml-100k --budget-min 5

Budget: training stops after the epoch in which `--budget-min` minutes of training time (validation
excluded) have been spent, or after `--epochs`, or after `--patience` validation rounds without
improvement of valid sampled NDCG@10; the best validated weights are then evaluated. With the
defaults on 2 CPU cores the whole run (data preparation, training, validation, evaluation) takes
under 50 minutes.

Resumable: the run lives in `--work` (default runs/bench); rerun the same command after an
interruption and it continues from `<work>/teacher-<dataset>/last` (the budget counts the time
already spent). Writes benchmarks/results/teacher_<dataset>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import RESULTS, machine, markdown_table, write_results

# Published SASRec on ML-1M (Kang & McAuley 2018; sampled protocol) and the bar this project sets for the teacher.
PUBLISHED = {"sampled": {"ndcg@10": 0.59, "hr@10": 0.82}, "full": {"ndcg@10": 0.16, "hr@10": 0.285}}
TARGET = {"sampled": 0.55, "full": 0.15}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="ml-1m", choices=["ml-1m", "ml-100k"])
    p.add_argument("--budget-min", type=float, default=40.0, help="training time budget, minutes")
    p.add_argument("--epochs", type=int, default=400, help="upper bound on epochs")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--patience", type=int, default=6, help="validation rounds without improvement")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument(
        "--attn-dropout", type=float, default=0.0, help="attention-weight dropout (reference: = dropout)"
    )
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--loss", default="bce", choices=["bce", "sampled_softmax", "softmax"],
                   help="bce = the reference; softmax = the whole catalog (SASRec+)")  # fmt: skip
    p.add_argument("--eval-protocol", default="sampled", choices=["sampled", "full"],
                   help="validation metric that picks the best checkpoint")  # fmt: skip
    p.add_argument("--num-negatives", type=int, default=128, help="sampled_softmax: negatives per batch")
    p.add_argument("--tag", default="", help="suffix of the run dir and result files (variants side by side)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--work", default="runs/bench", help="data and run directory (resumable)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--run-file-only", action="store_true",
                   help="write results/<name>_run.yaml from the committed <name>.json's settings, training nothing")  # fmt: skip
    return p.parse_args()


def run_config(args: argparse.Namespace, data: str | Path, run_dir: str | Path) -> Any:
    """The `TeacherRunConfig` of this benchmark's run (the file `dist-srec pretrain-teacher --config` reads)."""
    from dist_srec.models.sasrec import SASRecConfig
    from dist_srec.train.teacher import TeacherRunConfig, TeacherTrainConfig, teacher_loop

    loop = teacher_loop(
        epochs=args.epochs, eval_every_epochs=args.eval_every, patience=args.patience, seed=args.seed,
        time_budget_s=args.budget_min * 60, progress=not args.no_progress,
    )  # fmt: skip
    train = TeacherTrainConfig(
        loop=loop, batch_size=args.batch_size, loss=args.loss, num_negatives=args.num_negatives,
        eval_protocol=args.eval_protocol,
    )  # fmt: skip
    return TeacherRunConfig(data=str(data), out=str(run_dir), model=SASRecConfig(**model_overrides(args)), train=train,
                            final_eval=False)  # fmt: skip


def write_run_file(args: argparse.Namespace, name: str) -> Path:
    """results/<name>_run.yaml: the run file of this result, with portable paths."""
    from dataclasses import asdict

    from dist_srec.io import write_run_file as write

    path = RESULTS / f"{name}_run.yaml"
    write(path, asdict(run_config(args, f"data/{args.dataset}", f"runs/{name.replace('_', '-')}")))
    return path


def run(args: argparse.Namespace, data: Path, run_dir: Path) -> tuple[object, list[dict], dict]:
    """Prepare (or reuse) the data, train (or resume) under the budget, evaluate OUT/best on test."""
    from dist_srec.config import PrepareConfig
    from dist_srec.data.prepare import prepare
    from dist_srec.inference.evaluate import evaluate_teacher
    from dist_srec.train.teacher import run_teacher

    t0 = time.perf_counter()
    prepare(PrepareConfig(dataset=args.dataset, out=str(data), progress=not args.no_progress))
    prep_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    state = run_teacher(run_config(args, data, run_dir))
    wall_train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = run_dir / "results.json"
    records = evaluate_teacher(run_dir / "best", data, seed=args.seed, out=out, progress=not args.no_progress)
    train = {
        "epochs": state.epoch,
        "global_steps": state.global_step,
        "best_step": state.best_step,
        "best_valid_ndcg@10": state.best_metric,
        "stopped": state.stopped,
        "train_time_s": round(state.elapsed_s, 1),
        "train_samples": state.samples,
        "samples_per_s": round(state.samples / max(state.elapsed_s, 1e-9), 1),
        "wall_s_this_session": round(wall_train_s, 1),
        "eval_s": round(time.perf_counter() - t0, 1),
        "prepare_s": round(prep_s, 1),
    }
    return state, records, train


def model_overrides(args: argparse.Namespace) -> dict:
    return {"dropout": args.dropout, "attn_dropout": args.attn_dropout, "max_len": args.max_len}


def report(args: argparse.Namespace, state, records: list[dict], train: dict) -> tuple[dict, str]:
    """The JSON payload and the markdown page."""
    import torch

    rows = []
    for r in records:
        p = r["protocol"]
        label = p["protocol"] + (
            " (history excluded)" if p["exclude_history"] and p["protocol"] == "full" else ""
        )
        rows.append({"protocol": label, **r["metrics"], "users": r["counts"]["evaluated_users"]})
    sampled = next(r for r in records if r["protocol"]["protocol"] == "sampled")["metrics"]
    full = {
        r["protocol"]["exclude_history"]: r["metrics"] for r in records if r["protocol"]["protocol"] == "full"
    }
    verdict = {
        "sampled_ndcg@10_target": TARGET["sampled"],
        "full_ndcg@10_target": TARGET["full"],
        "sampled_met": sampled["ndcg@10"] >= TARGET["sampled"],
        "full_met": full[False]["ndcg@10"] >= TARGET["full"],
        "full_history_excluded_met": full[True]["ndcg@10"] >= TARGET["full"],
    }
    info = machine()
    payload = {
        "benchmark": "teacher",
        "dataset": args.dataset,
        "settings": {**vars(args), "torch_threads": torch.get_num_threads()},
        "model": {"hidden": 64, "num_blocks": 2, "num_heads": 1, **model_overrides(args)},
        "train": train,
        "results": records,
        "published_sasrec_ml-1m": PUBLISHED,
        "verdict": verdict if args.dataset == "ml-1m" else None,
        "machine": info,
        "history": state.history,
    }
    loss = {
        "bce": "BCE with one negative per position (the reference)",
        "sampled_softmax": f"sampled softmax over {args.num_negatives} uniform negatives shared by the batch "
        "(not the reference)",
        "softmax": "softmax over the whole catalog (SASRec+; not the reference)",
    }[args.loss]
    md = [
        f"# SASRec teacher on {args.dataset} ({info['date']})",
        "",
        f"Budget: {args.budget_min:g} min of training on {info['cores']} CPU cores ({torch.get_num_threads()} "
        f"torch threads, machine shared with other jobs), max {args.epochs} epochs, validation every "
        f"{args.eval_every} epochs ({args.eval_protocol} NDCG@10, valid split), patience {args.patience}. Model: D=64, "
        f"2 blocks, 1 head, dropout {args.dropout}, attention dropout {args.attn_dropout}, max_len "
        f"{args.max_len}; Adam 1e-3 (0.9, 0.98), batch {args.batch_size}; loss: {loss}.",
        "",
        f"Trained {state.global_step} steps, {state.epoch} full epochs ({state.stopped}), best at step {state.best_step}; "
        f"{train['train_time_s']:.0f} s of training, {train['samples_per_s']:.0f} samples/s; "
        f"test evaluation {train['eval_s']:.0f} s.",
        "",
        "Test split, ties broken pessimistically; sampled = target + 99 unseen negatives (seed "
        f"{args.seed}); full = all {records[0]['counts']['num_items']} items.",
        "",
        markdown_table(rows, ["protocol", "ndcg@10", "hr@10", "ndcg@20", "hr@20", "mrr", "users"]),
        "",
        "Published SASRec on ML-1M: sampled NDCG@10 ~0.59 / HR@10 ~0.82 (SASRec paper, pmixer); "
        "full NDCG@10 ~0.16 / HR@10 ~0.285 (HSTU README). Targets here: >= 0.55 sampled, >= 0.15 full.",
    ]
    return payload, "\n".join(md)


def main() -> int:
    args = parse()
    name = f"teacher_{args.dataset}" + (f"_{args.tag}" if args.tag else "")
    if args.run_file_only:
        prior = json.loads((RESULTS / f"{name}.json").read_text())["settings"]
        print(f"wrote {write_run_file(argparse.Namespace(**{**vars(args), **prior}), name)}")
        return 0
    work = Path(args.work)
    state, records, train = run(args, work / f"data-{args.dataset}", work / name.replace("_", "-"))
    payload, md = report(args, state, records, train)
    write_run_file(args, name)
    js, mdp = write_results(name, payload, md)
    print(md)
    print(f"wrote {js} and {mdp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
