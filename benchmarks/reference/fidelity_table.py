"""The fidelity table: the paper's code (a `run_reference_budget.py` JSON) against dist-srec (a train
run's metrics.jsonl and its `dist-srec evaluate` JSON) at the same budget, from their result files.

    .venv/bin/python benchmarks/reference/fidelity_table.py --reference REF.json --srec RUN \\
        --srec-eval RUN_EVAL.json [--nodistill-eval ND_EVAL.json] --settings "..." --name fidelity_ml-100k_budget

Per-step training losses: the reference records (CE, MSE + both uniformity terms) for every step;
dist-srec's metrics.jsonl holds each term's running mean over the epoch, from which each step's value
is recovered (n * mean_n - (n - 1) * mean_{n-1}). Test metrics: sampled NDCG@10 / HR@10 over all test
users on the same candidates (dist-srec's seeded 99 negatives; the reference's vectors re-scored on
them), with the standard error of the mean over users (SE = std / sqrt(n)), and the difference in SEs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.harness import machine, markdown_table, write_results


def per_step(run: Path) -> dict[str, list[float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "train_retrieval" in r and r.get("epoch", 0) == 0]
    out: dict[str, list[float]] = {"retrieval": [], "match": []}
    prev: dict[str, float] = {}
    for n, r in enumerate(sorted(rows, key=lambda r: r["step"]), start=1):
        match = sum(
            r.get(k, 0.0) for k in ("train_distill_mse", "train_uniformity_user", "train_uniformity_teacher")
        )
        for key, mean in (("retrieval", r["train_retrieval"]), ("match", match)):
            out[key].append(n * mean - (n - 1) * prev.get(key, 0.0))
            prev[key] = mean
    return out


def srec_metrics(path: Path) -> dict[str, Any]:
    """{model: {ndcg@10, hr@10, num_users}} of the sampled protocol in a `dist-srec evaluate` JSON."""
    doc = json.loads(path.read_text())
    out = {}
    for r in doc["records"]:
        if r["protocol"]["protocol"] == "sampled" and r["model"] in ("llm-srec", "sasrec"):
            out[r["model"]] = {**r["metrics"], "num_users": r["counts"]["evaluated_users"]}
    return out


def popularity_ndcg(data: Path, seed: int = 42, negatives: int = 99) -> dict[str, float]:
    """NDCG@10 / HR@10 of ranking by train-split popularity, on the test split's sampled candidates
    (the very negatives `dist-srec evaluate` draws): what a model that ignores the user would score."""
    import torch

    from dist_srec.data.catalog import Catalog
    from dist_srec.data.loader import rank_loader
    from dist_srec.eval.metrics import finalize
    from dist_srec.eval.protocols import EvalProtocol, evaluate_sampled
    from dist_srec.parallel.context import TrainContext

    cat = Catalog.load(data)
    t = cat.interactions(["item_id", "split"])
    train = [
        i for i, sp in zip(t.column("item_id").to_pylist(), t.column("split").to_pylist()) if sp == "train"
    ]
    counts = torch.bincount(torch.tensor(train), minlength=cat.num_items + 1).float()
    proto = EvalProtocol(protocol="sampled", split="test", seed=seed, num_users=0, num_negatives=negatives)
    batches = rank_loader(cat.root, "test", 64, 1, TrainContext(), shuffle=False, remainder="pad")
    sums = evaluate_sampled(lambda _b, cands: counts[cands], batches, user_items=cat.user_items(),
                            num_items=cat.num_items, num_users=cat.num_users, protocol=proto)  # fmt: skip
    return finalize(sums)


def se(mean: float, n: int) -> float:
    """SE bound of a mean over n users of values in [0, 1] (NDCG, HR): sqrt(m (1 - m) / n); the result
    files hold no per-user values."""
    return math.sqrt(max(mean * (1 - mean), 0.0) / n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference", type=Path, required=True)
    ap.add_argument("--srec", type=Path, required=True, help="dist-srec train OUT (metrics.jsonl)")
    ap.add_argument("--srec-eval", type=Path, required=True)
    ap.add_argument("--seed-evals", type=Path, nargs="*", default=[],
                    help="evaluations of the same dist-srec run with other seeds: rows, and the spread")  # fmt: skip
    ap.add_argument("--nodistill-eval", type=Path)
    ap.add_argument("--data", type=Path, help="the prepared data dir: adds a popularity row")
    ap.add_argument("--settings", default="")
    ap.add_argument("--name", default="fidelity_ml-100k_budget")
    a = ap.parse_args()
    ref = json.loads(a.reference.read_text())
    ours = srec_metrics(a.srec_eval)
    n = int(ref["eval"]["test_users"])
    rows = [
        {"run": "reference LLM-SRec (its tie rule)", "ndcg@10": ref["eval"]["reference_ndcg@10"],
         "hr@10": ref["eval"]["reference_hr@10"], "users": n},
        {"run": "reference LLM-SRec (pessimistic ties)", "ndcg@10": ref["eval"]["recomputed_ndcg@10_pessimistic"],
         "users": n},
        {"run": "dist-srec LLM-SRec", "ndcg@10": ours["llm-srec"]["ndcg@10"], "hr@10": ours["llm-srec"]["hr@10"],
         "users": int(ours["llm-srec"]["num_users"])},
        {"run": "SASRec teacher (dist-srec eval)", "ndcg@10": ours["sasrec"]["ndcg@10"],
         "hr@10": ours["sasrec"]["hr@10"], "users": int(ours["sasrec"]["num_users"])},
    ]  # fmt: skip
    seeds = [ours["llm-srec"]["ndcg@10"]]
    for k, path in enumerate(a.seed_evals, start=1):
        m = srec_metrics(path)["llm-srec"]
        seeds.append(m["ndcg@10"])
        rows.append({"run": f"dist-srec LLM-SRec, other seed {k}", "ndcg@10": m["ndcg@10"], "hr@10": m["hr@10"],
                     "users": int(m["num_users"])})  # fmt: skip
    if a.nodistill_eval:
        nd = srec_metrics(a.nodistill_eval)["llm-srec"]
        rows.append({"run": "dist-srec no-distill", "ndcg@10": nd["ndcg@10"], "hr@10": nd["hr@10"],
                     "users": int(nd["num_users"])})  # fmt: skip
    if a.data:
        pop = popularity_ndcg(a.data)
        rows.append({"run": "popularity (train counts), same candidates", "ndcg@10": pop["ndcg@10"],
                     "hr@10": pop["hr@10"], "users": int(pop.get("count", n))})  # fmt: skip
    for r in rows:
        r["ndcg@10 SE"] = se(r["ndcg@10"], r["users"])
    ref_p, mine = rows[1], rows[2]
    diff = mine["ndcg@10"] - ref_p["ndcg@10"]
    diff_se = math.hypot(ref_p["ndcg@10 SE"], mine["ndcg@10 SE"])
    spread = None
    if len(seeds) > 1:
        mean = sum(seeds) / len(seeds)
        spread = {"seeds": len(seeds), "mean": mean, "min": min(seeds), "max": max(seeds),
                  "std": math.sqrt(sum((x - mean) ** 2 for x in seeds) / (len(seeds) - 1))}  # fmt: skip
    curves = {"reference": {"retrieval": [x[0] for x in ref["losses_retrieval_match"]],
                            "match": [x[1] for x in ref["losses_retrieval_match"]]},
              "dist-srec": per_step(a.srec)}  # fmt: skip
    step_s = {"reference": sorted(ref["step_s"])[len(ref["step_s"]) // 2]}
    payload = {"benchmark": "fidelity", "settings": a.settings, "machine": machine(), "rows": rows,
               "ndcg@10_difference": diff, "difference_in_se": diff / diff_se, "seed_spread": spread, "curves": curves,
               "reference_step_s_median": step_s["reference"], "sources": {k: str(v) for k, v in vars(a).items()}}  # fmt: skip
    md = "\n".join([
        "# Fidelity: dist-srec against the paper's code at the same budget", "",
        a.settings, "",
        markdown_table(rows, ["run", "ndcg@10", "ndcg@10 SE", "hr@10", "users"]), "",
        f"dist-srec minus reference (pessimistic ties, same candidates): {diff:+.4f} NDCG@10 = "
        f"{diff / diff_se:+.2f} SE of the difference (SE per run: the bound sqrt(m(1-m)/n)).", "",
        *([f"dist-srec over {spread['seeds']} seeds (training seed and head init): NDCG@10 mean {spread['mean']:.3f}, "
           f"std {spread['std']:.3f}, range {spread['min']:.3f}-{spread['max']:.3f}; the reference ran one seed.", ""]
          if spread else []),
        "Training losses step by step: `" + a.name + ".png` and `curves` in the JSON (reference: CE and "
        "MSE + uniformity as it records them; dist-srec: the same terms, recovered from its running means).",
    ])  # fmt: skip
    js, mdp = write_results(a.name, payload, md)
    print(md)
    print(f"wrote {js} and {mdp}")


if __name__ == "__main__":
    main()
