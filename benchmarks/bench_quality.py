"""Quality report on ML-1M with SmolLM2: the teacher, LLM-SRec, and the paper's two ablations (no
distillation, no uniformity), evaluated on the same test users with the sampled (1 + 99) and full
protocols, plus the history-shuffle diagnostic.

    .venv/bin/python benchmarks/bench_quality.py                      # resumes wherever it stopped
    .venv/bin/python benchmarks/bench_quality.py --steps 300 --eval-users 1000

Resumable at every level, since a full run takes many hours on 2 CPU cores: the data, the teacher and
each variant's training live in `--work` (default ~/.cache/dist-srec/runs/quality-ml-1m, outside the
work tree so a later session on the same machine continues it); training saves `last` every
`--save-every` steps and resumes from it; a finished evaluation is kept in `<variant>/eval.json`.
After every stage the script rewrites benchmarks/results/quality_ml-1m.{json,md} with what has been
measured so far, and says which stages are still missing: partial results are labelled as such.

The paper's claim to check: LLM-SRec beats its teacher and its no-distillation ablation.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import machine, write_results

VARIANTS = {
    "llm-srec": {"distill": True, "uniformity": True},
    "no-distill": {"distill": False, "uniformity": True},
    "no-uniformity": {"distill": True, "uniformity": False},
}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default=str(Path.home() / ".cache" / "dist-srec" / "runs" / "quality-ml-1m"))
    p.add_argument("--teacher", help="a trained ML-1M teacher checkpoint (default: train one in WORK)")
    p.add_argument("--teacher-budget-min", type=float, default=40.0)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument(
        "--steps", type=int, default=300, help="training steps per variant (302 = one ML-1M epoch)"
    )
    p.add_argument("--eval-every-steps", type=int, default=100)
    p.add_argument("--valid-users", type=int, default=300)
    p.add_argument("--eval-users", type=int, default=1000, help="seeded test-user subset (0 = all 6040)")
    p.add_argument("--save-every", type=int, default=5)
    p.add_argument("--llm", default="smollm2")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args()


def teacher_ckpt(args: argparse.Namespace, data: Path) -> Path:
    """--teacher if given; else WORK/teacher/best if a finished teacher is there; else train one there."""
    if args.teacher:
        return Path(args.teacher)
    from dist_srec.io import read_json
    from dist_srec.train.teacher import TeacherTrainConfig
    from dist_srec.train.teacher_cli import pretrain_teacher

    out = Path(args.work) / "teacher"
    state = out / "last" / "train_state.json"
    if (out / "best").is_dir() and state.is_file() and read_json(state)["train_state"].get("stopped"):
        return out / "best"
    cfg = TeacherTrainConfig(epochs=400, eval_every=5, patience=6, time_budget_s=args.teacher_budget_min * 60,
                             seed=args.seed, progress=not args.no_progress)  # fmt: skip
    pretrain_teacher(data, out, cfg=cfg, final_eval=False)
    return out / "best"


def run_variant(args: argparse.Namespace, name: str, data: Path, teacher: Path) -> dict[str, Any]:
    """Train (or resume) one variant, then evaluate its best checkpoint (or reuse that evaluation)."""
    from dist_srec.io import read_json, write_json_atomic
    from dist_srec.losses import LossConfig
    from dist_srec.models.llm import LLMConfig
    from dist_srec.models.srec import LLMSRecConfig
    from dist_srec.train import checkpoint as ckpt_io
    from dist_srec.train.loop import LoopConfig
    from dist_srec.train.srec_run import SRecRunConfig, evaluate_srec, train_srec

    out = Path(args.work) / name
    cfg = SRecRunConfig(
        data=str(data), teacher=str(teacher), out=str(out), llm=LLMConfig(path=args.llm),
        model=LLMSRecConfig(loss=LossConfig(**VARIANTS[name]), seed=args.seed),
        loop=LoopConfig(epochs=100, lr=1e-4, lr_decay=0.95, max_steps=args.steps, patience=0,
                        eval_every_steps=args.eval_every_steps, save_every_steps=args.save_every,
                        seed=args.seed, progress=not args.no_progress),
        eval_users=args.valid_users,
    )  # fmt: skip
    t0 = time.perf_counter()
    state = train_srec(cfg)
    train = {"steps": state.global_step, "stopped": state.stopped, "train_s": round(state.elapsed_s, 1),
             "samples": state.samples, "best_valid_ndcg@10": state.best_metric, "best_step": state.best_step,
             "valid_history": state.history}  # fmt: skip
    sha = ckpt_io.model_sha256(out / "best")
    ev_file = out / "eval.json"
    doc = read_json(ev_file) if ev_file.is_file() else {}
    if doc.get("checkpoint_sha256") != sha or doc.get("num_users") != args.eval_users:
        t0 = time.perf_counter()
        doc = evaluate_srec(out / "best", split="test", num_users=args.eval_users, seed=args.seed,
                            shuffle_history=True, progress=not args.no_progress)  # fmt: skip
        doc.update(
            checkpoint_sha256=sha, num_users=args.eval_users, eval_s=round(time.perf_counter() - t0, 1)
        )
        write_json_atomic(ev_file, doc)
    return {"train": train, "eval": doc}


def summarize(results: dict[str, Any], args: argparse.Namespace, missing: list[str]) -> None:
    rows, teacher = [], None
    for name, res in results.items():
        rep = res["eval"]["report"]
        teacher = teacher or rep["sasrec"]
        rows.append((name, rep["llm-srec"], res["train"]))
    lines = [
        f"# Quality on ML-1M with SmolLM2-135M ({machine()['date']})", "",
        "**Partial results** — still missing: " + ", ".join(missing) if missing else "All variants evaluated.", "",
        f"Training budget: {args.steps} steps per variant (one ML-1M epoch is 302 steps of 20 users).", "",
        f"Test split, seeded subset of {args.eval_users or 'all'} users, the same users and candidates for every "
        "row. sampled = target + 99 unseen items; full = the whole catalog (history not excluded); ties count "
        f"against the target. Each LLM-SRec variant trained {args.steps} steps of 20 users (SmolLM2 4-bit GGUF "
        "weights dequantized to fp32/bf16; not the paper's LLaMA-3.2-3B).", "",
        "| model | steps | sampled NDCG@10 | sampled HR@10 | full NDCG@10 | full HR@10 | shuffled sampled NDCG@10 | cos(orig, shuffled) |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    fmt = lambda r, steps: (f"| {steps} | {r['sampled']['ndcg@10']:.4f} | {r['sampled']['hr@10']:.4f} | "  # noqa: E731
                            f"{r['full']['ndcg@10']:.4f} | {r['full']['hr@10']:.4f} | "
                            f"{r['shuffled/sampled']['ndcg@10']:.4f} | {r['shuffle_cosine']:.4f} |")  # fmt: skip
    if teacher:
        lines.append("| SASRec teacher " + fmt(teacher, "-"))
    for name, r, tr in rows:
        lines.append(f"| {name} " + fmt(r, tr["steps"]))
    claims = {}
    if "llm-srec" in results and teacher:
        ours = results["llm-srec"]["eval"]["report"]["llm-srec"]["sampled"]["ndcg@10"]
        claims["beats_teacher_sampled_ndcg@10"] = ours > teacher["sampled"]["ndcg@10"]
        if "no-distill" in results:
            nd = results["no-distill"]["eval"]["report"]["llm-srec"]["sampled"]["ndcg@10"]
            claims["beats_no_distill_sampled_ndcg@10"] = ours > nd
    lines += [
        "",
        "Paper claims checked: " + (", ".join(f"{k}: {v}" for k, v in claims.items()) or "none yet"),
    ]
    payload = {"benchmark": "quality", "dataset": "ml-1m", "machine": machine(), "settings": vars(args),
               "missing": missing, "claims": claims, "results": results}  # fmt: skip
    write_results("quality_ml-1m", payload, "\n".join(lines))


def main() -> None:
    args = parse()
    from dist_srec.config import PrepareConfig
    from dist_srec.data.prepare import prepare

    work = Path(args.work)
    data = work / "data"
    prepare(PrepareConfig(dataset="ml-1m", out=str(data), progress=not args.no_progress))
    teacher = teacher_ckpt(args, data)
    names = [v for v in args.variants.split(",") if v]
    results: dict[str, Any] = {}
    for i, name in enumerate(names):
        results[name] = run_variant(args, name, data, teacher)
        not_run = [v for v in VARIANTS if v not in names]  # not asked for in this invocation
        summarize(results, args, missing=names[i + 1 :] + not_run)
        print(f"[quality] {name} done", flush=True)


if __name__ == "__main__":
    main()
