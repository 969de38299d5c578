"""The main job on the embedded default: ML-100K (from `recbole`) + SmolLM2-135M-Instruct, end to end.

Stages, each reused when its output is already there (a re-run finishes in seconds):
1. prepare ML-100K                                  -> OUT/data
2. pre-train the SASRec teacher (time-boxed)        -> OUT/teacher/best
3. train LLM-SRec with SmolLM2 (time-boxed)         -> OUT/llm-srec/best
4. evaluate both on a seeded subset of test users, sampled 1+99 and full ranking, with the shuffle
   diagnostic                                       -> OUT/eval-test.json
5. print the comparison table and a few recommendations.

The budget is sized for about 15 minutes on 2 CPU cores (the run files `configs/demo_*.yaml`). LLM-SRec
reads SmolLM2 at its 8th of 30 layers, with lr 1e-3 after a 10-step warm-up, for 2 epochs: the recipe
of benchmarks/results/fidelity_ml-100k_budget.md. A step (20 users + 80 item prompts through 8 layers,
forward and backward) took about 2.5 s on a 2-core Intel Xeon with AMX; where a step is slower, the
420 s step budget may stop it before the 2 epochs end (the note under the table says how many steps it
trained). It is evaluated on a user subset: the demo is a run of the real pipeline, not a quality
result (the committed 4-seed results are printed beside its table).
SmolLM2's weights are 4-bit GGUF dequantized on load, so its numbers are not those of the original
checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from dist_srec.config import PrepareConfig, load_run_file
from dist_srec.data.prepare import prepare, summary
from dist_srec.eval.compare import format_report
from dist_srec.inference.evaluate import evaluate_srec
from dist_srec.inference.load import load_srec
from dist_srec.inference.recommend import recommend
from dist_srec.inference.run_report import report
from dist_srec.io import read_json, write_json_atomic
from dist_srec.train import checkpoint as ckpt_io
from dist_srec.train.loop_types import TrainState
from dist_srec.train.srec_train import SRecRunConfig, train_srec
from dist_srec.train.teacher import TeacherRunConfig, run_teacher

CONFIGS = Path(__file__).parent / "configs"
FIDELITY = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "fidelity_ml-100k_budget.json"
"""The committed full-length side-by-side with the paper's code (present in a checkout, not in a wheel)."""
"""The demo's run files (`demo_teacher.yaml`, `demo_llm-srec.yaml`): the same files `--config` reads."""
TEST_USERS = 200


def _stage(i: int, text: str) -> None:
    print(f"\n[{i}/5] {text}", flush=True)


def budget_note(st: TrainState, cfg: SRecRunConfig, manifest: dict) -> str:
    """What the LLM-SRec row above trained on, and the committed full-length numbers to read it against."""
    users = max(int(manifest["samples"]["train"]["written"]), 1)
    layers = f"{cfg.llm.num_layers} layers" if cfg.llm.num_layers else "all layers"
    lines = [
        f"LLM-SRec above: {st.global_step} steps of {cfg.batch_size} users = {st.samples / users:.2f} epochs "
        f"({st.stopped or 'done'}), {cfg.llm.path} read at {layers}, lr {cfg.loop.lr:g}, "
        f"warm-up {cfg.loop.warmup_steps} steps."
    ]
    doc = read_json(FIDELITY) if FIDELITY.is_file() else {}
    sides = doc.get("seed_spread")
    if isinstance(sides, dict) and all(isinstance(v, dict) and "mean" in v for v in sides.values()):
        names = {"recipe": f"recipe ({doc['recipe']})"} if doc.get("recipe") else {}
        lines.append(f"Committed full-length results ({FIDELITY.relative_to(FIDELITY.parents[2])}, all test users): "
                     + "; ".join(f"{names.get(k, k)} {v['mean']:.3f} +- {v['std']:.3f} over {v['seeds']} seeds"
                                 for k, v in sorted(sides.items(), key=lambda kv: kv[0] != "reference"))
                     + " sampled NDCG@10.")  # fmt: skip
    else:
        lines.append(
            "Committed full-length results: benchmarks/results/fidelity_ml-100k_budget.md in the repository."
        )
    return "\n".join(lines)


def run_demo(out: str, llm: str = "smollm2", fast: bool = False) -> int:
    """Run the stages above into `out`; `fast` shrinks every budget (and `llm="tiny"` makes it a smoke run)."""

    root = Path(out)
    _stage(1, "prepare ML-100K (recbole package files)")
    manifest = prepare(PrepareConfig(dataset="ml-100k", out=str(root / "data")))
    print(summary(manifest))

    tcfg = load_run_file(TeacherRunConfig, CONFIGS / "demo_teacher.yaml", data=str(root / "data"),
                         out=str(root / "teacher"),
                         **({"train": {"loop": {"epochs": 3, "eval_every_epochs": 1, "time_budget_s": 10}}} if fast else {}))  # fmt: skip
    _stage(
        2,
        f"pre-train the SASRec teacher (up to {tcfg.train.loop.time_budget_s:.0f} s; {CONFIGS / 'demo_teacher.yaml'})",
    )
    tstate = run_teacher(tcfg)
    print(f"teacher: {tstate.epoch} epochs ({tstate.stopped}), best valid NDCG@10 {tstate.best_metric:.4f}")

    cfg = load_run_file(SRecRunConfig, CONFIGS / "demo_llm-srec.yaml", data=str(root / "data"),
                        teacher=str(root / "teacher" / "best"), out=str(root / "llm-srec"), llm={"path": llm},
                        **({"loop": {"max_steps": 4}, "eval_users": 50} if fast else {}))  # fmt: skip
    _stage(3, f"train LLM-SRec with {llm} (up to {cfg.loop.time_budget_s:.0f} s of steps, then validation; "
              f"{CONFIGS / 'demo_llm-srec.yaml'})")  # fmt: skip
    st = train_srec(cfg)
    print(f"llm-srec: {st.global_step} steps ({st.stopped}), best valid NDCG@10 {st.best_metric:.4f}")

    n_test = 100 if fast else TEST_USERS
    _stage(4, f"evaluate LLM-SRec and the teacher on {n_test} test users (same users, same candidates)")
    ckpt = root / "llm-srec" / "best"
    report_file = root / "eval-test.json"
    sha = ckpt_io.model_sha256(ckpt)
    if report_file.is_file() and read_json(report_file).get("checkpoint_sha256") == sha:
        doc = read_json(report_file)
        print(f"(reusing {report_file})")
    else:
        doc = evaluate_srec(ckpt, split="test", shuffle_history=True, num_users=n_test)
        doc["checkpoint_sha256"] = sha
        write_json_atomic(report_file, doc)

    _stage(5, "results")
    print(format_report(doc["report"]))
    print("(sampled: target + 99 unseen items; full: all items; ties count against the target)")
    print(budget_note(st, cfg, manifest))

    loaded = load_srec(ckpt)
    for user in loaded[2].user_keys[1:3]:
        print(f"\ntop 5 for user {user}:")
        for r in recommend(ckpt, user=user, k=5, loaded=loaded):
            print(f"  {r.rank}. {r.title} ({r.score:.3f})")
    _, files = report([root / "teacher", root / "llm-srec"], root / "report")
    print(f"\ncurves and table: {', '.join(str(f) for f in files)} (dist-srec report)")
    print(f"all outputs under {root}")
    return 0
