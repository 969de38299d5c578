"""`dist-srec train`, `evaluate` and `recommend`: LLM-SRec's run file and flags to the library."""

from __future__ import annotations

from jsonargparse import ArgumentParser, Namespace

from dist_srec.cli.command import Command, parser
from dist_srec.config import from_namespace
from dist_srec.eval.compare import format_report
from dist_srec.inference.evaluate import evaluate_srec
from dist_srec.inference.recommend import recommend
from dist_srec.storage import run_dir_of
from dist_srec.train.srec_train import SRecRunConfig, train_srec


def add_run_config(p: ArgumentParser) -> None:
    """Every field of `SRecRunConfig` as a flag (`--data`, `--llm.path`, `--loop.lr`, ...)."""
    p.add_class_arguments(SRecRunConfig, None, fail_untyped=False)


def run_config(p: ArgumentParser, ns: Namespace) -> SRecRunConfig:
    return from_namespace(SRecRunConfig, p, ns)


def _train_parser() -> ArgumentParser:
    p = parser("Train LLM-SRec: the frozen LM reads the prompts, the frozen teacher is distilled into the "
               "trainable heads. Resumes from OUT/last; OUT/best keeps the best validation NDCG@10; "
               "OUT/config.yaml is the resolved run file.", [
        "dist-srec train --data runs/demo/data --teacher runs/demo/teacher/best --out runs/srec",
        "dist-srec train --config benchmarks/configs/quality_ml-1m.yaml --model.loss.distill_weight 128 --out runs/dw128",
        "dist-srec train --config runs/srec/config.yaml   # replay (or resume) a run",
    ], run_file=True)  # fmt: skip
    add_run_config(p)
    return p


def _train(p: ArgumentParser, ns: Namespace) -> int:
    cfg = run_config(p, ns)
    st = train_srec(cfg)
    print(f"llm-srec: {st.global_step} steps, stopped: {st.stopped}, best valid {cfg.loop.select_metric} "
          f"{st.best_metric:.4f} at step {st.best_step}; checkpoint {cfg.out}/best")  # fmt: skip
    return 0


def _evaluate_parser() -> ArgumentParser:
    p = parser("Evaluate an LLM-SRec checkpoint next to its teacher on the same users and candidates "
               "(sampled 1+99 and full ranking).", [
        "dist-srec evaluate --ckpt runs/srec/best",
        "dist-srec evaluate --ckpt runs/srec/best --split valid --eval_users 1000 --shuffle_history true",
    ])  # fmt: skip
    p.add_argument("--ckpt", type=str, required=True, help="LLM-SRec checkpoint (train OUT/best)")
    p.add_argument(
        "--data", type=str | None, default=None, help="prepared data dir (default: the checkpoint's)"
    )
    p.add_argument("--split", type=str, default="test", choices=["valid", "test"])
    p.add_argument("--eval_users", type=int, default=0, help="seeded user subset (0 = all)")
    p.add_argument("--eval_negatives", type=int, default=99, help="sampled protocol: negatives per user")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--shuffle_history", type=bool, default=False, help="also evaluate with shuffled histories"
    )
    p.add_argument("--exclude_history", type=str, default="no", choices=["no", "yes"],
                   help="full ranking: drop the user's history items (as evaluate-teacher's, which also takes both)")  # fmt: skip
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--results", type=str | None, default=None,
                   help="results JSON file (default CKPT/../eval-<split>.json)")  # fmt: skip
    p.add_argument("--progress", type=bool, default=True)
    return p


def _evaluate(p: ArgumentParser, a: Namespace) -> int:
    out = a.results or run_dir_of(a.ckpt) / f"eval-{a.split}.json"
    doc = evaluate_srec(
        a.ckpt, data=a.data, split=a.split, num_users=a.eval_users, num_negatives=a.eval_negatives, seed=a.seed,
        shuffle_history=a.shuffle_history, exclude_history=a.exclude_history == "yes", batch_size=a.batch_size, out=out,
        progress=a.progress,
    )  # fmt: skip
    print(format_report(doc["report"]))
    print(f"wrote {out}")
    return 0


def _recommend_parser() -> ArgumentParser:
    p = parser("Top-K titles for a known user, or for an ad-hoc history of titles.", [
        "dist-srec recommend --ckpt runs/srec/best --user 42 --k 10",
        'dist-srec recommend --ckpt runs/srec/best --history "Toy Story (1995); #50"',
    ])  # fmt: skip
    p.add_argument("--ckpt", type=str, required=True)
    p.add_argument("--user", type=str | None, default=None, help="a user id as in the source data")
    p.add_argument("--history", type=str | None, default=None,
                   help='titles (or #<item id>) separated by ";", oldest first')  # fmt: skip
    p.add_argument("--k", type=int, default=10)
    p.add_argument(
        "--data", type=str | None, default=None, help="prepared data dir (default: the checkpoint's)"
    )
    return p


def _recommend(p: ArgumentParser, a: Namespace) -> int:
    history = a.history.split(";") if a.history is not None else None
    recs = recommend(a.ckpt, user=a.user, history=history, k=a.k, data=a.data)
    who = f"user {a.user}" if a.user is not None else "the given history"
    print(f"top {a.k} for {who}:")
    for r in recs:
        print(f"{r.rank:3d}. {r.title}  (item {r.item_id}, score {r.score:.4f})")
    return 0


COMMANDS = [
    Command("train", "train LLM-SRec (resumes from OUT/last)", _train_parser, _train),
    Command("evaluate", "evaluate LLM-SRec next to its teacher", _evaluate_parser, _evaluate),
    Command("recommend", "top-K titles for a user or a title history", _recommend_parser, _recommend),
]
