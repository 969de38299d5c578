"""Lockstep parity with the paper's code: the same heads, batches and negatives on both sides, step by step.

    cd /work/main && OMP_NUM_THREADS=2 /work/scratch/ref-venv/bin/python \\
        benchmarks/reference/step_parity.py --ref /work/scratch/llmsrec-ref --name ml-100k \\
        --llm_path /work/scratch/smollm2-l8 --data /work/scratch/data/ml-100k \\
        --teacher /work/scratch/fid/teacher --steps 5 --out /work/scratch/parity.json

Both models are built in fp32 (the reference with `--llm_dtype float32 --autocast_dtype off`, dist-srec with
`--llm.dtype float32`) from the same LM directory and the same teacher (the dist-srec teacher, converted
by convert_teacher.py). dist-srec's initial heads are copied into the reference's modules:

| dist-srec `heads.`  | reference                 |
|---------------------|---------------------------|
| `item_proj`         | `item_emb_proj`           |
| `user_out`          | `llm.CLS.weight[0]`       |
| `item_out`          | `llm.CLS_item.weight[0]`  |
| `user_head`         | `llm.pred_user`           |
| `item_head`         | `llm.pred_item`           |
| `teacher_proj`      | `llm.pred_user_CF2`       |

Each step, the reference runs its own training step (`mode='phase2'`: its prompts, its 3 negatives drawn
with np.random, its loss, backward and Adam step) on a batch of its shuffled DataLoader; a wrapper around
`make_candidate_text` records the candidates it drew. dist-srec then runs `LLMSRec.loss` on the same
users' train samples with those negatives, backward, and its own Adam step (same lr and betas). Recorded:
the loss terms of both sides, the largest relative difference of the user vectors and of every head's
gradient, and whether the prompt strings are identical. With `--teacher_mode train` the reference's
teacher runs in train mode as in its own loop (dropout on the distillation target); the default `eval`
removes that one known difference, so everything else must agree to rounding.

Nothing of the reference is copied here: its modules are imported from --ref at run time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_reference_budget import ref_namespace

HEAD_MAP = {  # dist-srec heads submodule -> reference module path
    "item_proj": "item_emb_proj",
    "user_head": "llm.pred_user",
    "item_head": "llm.pred_item",
    "teacher_proj": "llm.pred_user_CF2",
}


def _module(root: torch.nn.Module, path: str) -> torch.nn.Module:
    for part in path.split("."):
        root = getattr(root, part)
    return root


def pairs(ours, ref) -> list[tuple[str, torch.nn.Parameter, torch.nn.Parameter]]:
    """(name, dist-srec parameter, reference parameter) for every trainable head tensor."""
    out = []
    for name, path in HEAD_MAP.items():
        mine, theirs = (
            dict(getattr(ours.heads, name).named_parameters()),
            dict(_module(ref, path).named_parameters()),
        )
        out += [(f"{name}.{k}", mine[k], theirs[k]) for k in mine]
    out.append(("user_out", ours.heads.user_out, ref.llm.CLS.weight))
    out.append(("item_out", ours.heads.item_out, ref.llm.CLS_item.weight))
    return out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().reshape(-1), b.detach().double().reshape(-1)
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def grad_diffs(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per tensor: ‖g_ours − g_ref‖ / ‖g_ref of its whole head‖. Relative to the head, not the tensor: a
    tensor whose exact gradient is zero (item_head's last bias: it shifts all of a user's candidate
    scores alike, so the cross-entropy cannot see it) has only rounding noise on both sides."""
    heads: dict[str, float] = {}
    for n, g in ref.items():
        heads[n.split(".")[0]] = heads.get(n.split(".")[0], 0.0) + float(g.double().pow(2).sum())
    return {n: float((ours[n].double() - g.double()).norm()) / max(heads[n.split(".")[0]] ** 0.5, 1e-30)
            for n, g in ref.items()}  # fmt: skip


@torch.no_grad()
def test_ndcg(model, cat, num_users: int) -> dict[str, float]:
    """Sampled test metrics (dist-srec's protocol: 99 never-interacted negatives, seed 42, pessimistic
    ties) of `model`'s current heads, fp32 scores; `num_users` 0 or -1 = all."""
    from dist_srec.data.loader import rank_loader
    from dist_srec.eval.metrics import finalize
    from dist_srec.eval.protocols import EvalProtocol, evaluate_sampled
    from dist_srec.parallel.context import TrainContext

    model.eval()
    ids = torch.arange(1, cat.num_items + 1)
    items = torch.cat([model.encode_items(ids[i : i + 64]) for i in range(0, len(ids), 64)])
    table = torch.cat([items.new_zeros(1, items.shape[1]), items])  # [N+1, d], row = item id

    def score(sub, cands):
        return torch.einsum("bcd,bd->bc", table[cands], model.encode_users(sub))

    proto = EvalProtocol(protocol="sampled", split="test", num_users=max(num_users, 0))
    loader = rank_loader(cat.root, "test", 20, 128, TrainContext(), shuffle=False, remainder="pad")
    sums = evaluate_sampled(score, loader, user_items=cat.user_items(), num_items=cat.num_items,
                            num_users=cat.num_users, protocol=proto)  # fmt: skip
    model.train()
    return finalize(sums)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", required=True, type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--llm_path", required=True, type=Path, help="the HF directory both sides load")
    ap.add_argument("--data", required=True, type=Path, help="the dist-srec prepared data directory")
    ap.add_argument("--teacher", required=True, type=Path, help="the dist-srec teacher (converted for --ref)")
    ap.add_argument(
        "--num_layers", type=int, default=None, help="dist-srec's --llm.num_layers (default: all)"
    )
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch_size", type=int, default=20)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval_users", type=int, default=0,
                    help="after the steps, test both head sets on this many users (-1 = all, 0 = none)")  # fmt: skip
    ap.add_argument("--teacher_mode", choices=["eval", "train"], default="eval")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    data_dir, teacher_dir, lm_dir = a.data.resolve(), a.teacher.resolve(), a.llm_path.resolve()
    out_path = a.out.resolve() if a.out else None

    # --- dist-srec, fp32, the same LM directory --------------------------------------------------
    from dist_srec.data.batch import collate
    from dist_srec.data.catalog import Catalog
    from dist_srec.data.loader import ShardLoader
    from dist_srec.models.llmsrec import LLMSRecConfig
    from dist_srec.models.lm_config import LLMConfig
    from dist_srec.models.prompts import PromptConfig
    from dist_srec.train.srec_build import build_model

    cat = Catalog.load(data_dir)
    mcfg = LLMSRecConfig(prompts=PromptConfig(history_separator=","))
    ours, _ = build_model(
        LLMConfig(path=str(lm_dir), dtype="float32", num_layers=a.num_layers, compile_layers=False), teacher_dir, cat, mcfg,
        torch.device("cpu"),
    )  # fmt: skip
    loader = ShardLoader.for_checks(data_dir, "train")
    samples = {int(s["user"]): s for s, _ in loader.samples_in_range(0, 0, loader.total)}
    ours.train()

    # --- the reference, fp32, no autocast --------------------------------------------------------
    ref_dir = a.ref.resolve()
    os.chdir(ref_dir)
    sys.path.insert(0, str(ref_dir))
    from models.seqllm_model import llmrec_model
    from SeqRec.sasrec.utils import SeqDataset, data_partition
    from torch.utils.data import DataLoader

    ns = argparse.Namespace(
        llm_name="smollm2", name=a.name, save_dir="parity", batch_size=a.batch_size, batch_size_infer=a.batch_size,
        maxlen=128, lr=a.lr, llm_path=str(lm_dir), llm_dtype="float32", autocast_dtype="off", seed=a.seed,
    )  # fmt: skip
    args = ref_namespace(ns)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    random.seed(0)
    ref = llmrec_model(args).to("cpu")
    with torch.no_grad():
        for _, mine, theirs in pairs(ours, ref):
            theirs.copy_(mine.detach().reshape(theirs.shape))
    user_train, _, _, _, itemnum, _ = data_partition(a.name, args, path=f"./SeqRec/data_{a.name}/{a.name}")
    train_loader = DataLoader(SeqDataset(user_train, len(user_train), itemnum, 128), batch_size=a.batch_size,
                              shuffle=True)  # fmt: skip
    ref_opt = torch.optim.Adam(ref.parameters(), lr=a.lr, betas=(0.9, 0.98))
    our_opt = torch.optim.Adam(ours.trainable_parameters(), lr=a.lr, betas=(0.9, 0.98))

    drawn: list[list[int]] = []
    texts: dict[str, list[str]] = {"user": [], "item": []}
    orig_cand = ref.make_candidate_text

    def recording_cand(*args_, **kw):
        text, ids = orig_cand(*args_, **kw)
        drawn.append([int(x) for x in ids])
        texts["item"] += text
        return text, ids

    ref.make_candidate_text = recording_cand
    ref_terms: list[tuple[float, float]] = []
    ref.llm.register_forward_hook(lambda _m, _i, out: ref_terms.append((out[1], out[2])))
    ref_user: list[torch.Tensor] = []
    ref.llm.pred_user.register_forward_hook(lambda _m, _i, out: ref_user.append(out.detach()))
    our_user: list[torch.Tensor] = []
    ours.heads.user_head.register_forward_hook(lambda _m, _i, out: our_user.append(out.detach()))
    orig_train0 = ref.llm.train_mode0

    def recording_train0(samples_):
        texts["user"] += list(samples_["text_input"])
        return orig_train0(samples_)

    ref.llm.train_mode0 = recording_train0

    steps = []
    ref.train()
    if a.teacher_mode == "eval":
        ref.recsys.model.eval()
    for step, data in enumerate(train_loader):
        if step >= a.steps:
            break
        drawn.clear()
        texts["user"].clear()
        texts["item"].clear()
        u, seq, pos, neg = (x.numpy() for x in data)
        t0 = time.perf_counter()
        ref([u, seq, pos, neg], optimizer=ref_opt, batch_iter=[0, 1, step, len(train_loader)], mode="phase2")
        ref_grads = {n: theirs.grad.detach().clone() for n, _, theirs in pairs(ours, ref)}

        t1 = time.perf_counter()
        batch = collate([samples[int(x)] for x in u], 128)
        assert batch["target"].tolist() == [int(p[-1]) for p in pos], "the two sides' train targets differ"
        negatives = torch.tensor([d[1:] for d in drawn], dtype=torch.int64)
        our_opt.zero_grad(set_to_none=True)
        terms = ours.loss(batch, negatives)
        terms["loss"].backward()
        grads = grad_diffs(
            {n: mine.grad.reshape(ref_grads[n].shape) for n, mine, _ in pairs(ours, ref)}, ref_grads
        )
        our_opt.step()
        t2 = time.perf_counter()

        our_user_text = [ours.prompts.user_text(samples[int(x)]["history"], samples[int(x)]["history_ts"])
                         for x in u]  # fmt: skip
        our_item_text = [ours.prompts.item_text(int(i)) for d in drawn for i in d]
        rec, match = ref_terms[-1]
        ours_match = float(
            (terms["distill_mse"] + terms["uniformity_user"] + terms["uniformity_teacher"]).detach()
        )
        row = {
            "step": step,
            "reference": {"retrieval": rec, "match": match},
            "dist_srec": {"retrieval": float(terms["retrieval"]), "match": ours_match,
                          **{k: float(v.detach()) for k, v in terms.items() if k not in ("loss", "retrieval")}},
            "user_vectors_rel_diff": rel(our_user[-1], ref_user[-1]),
            "grad_rel_diff_max": max(grads.values()),
            "grad_rel_diff": grads,
            "user_prompts_identical": our_user_text == texts["user"],
            "item_prompts_identical": our_item_text == texts["item"],
            "negatives_include_target": int(sum(d[0] in d[1:] for d in drawn)),
            "step_s": {"reference": round(t1 - t0, 2), "dist_srec": round(t2 - t1, 2)},
        }  # fmt: skip
        steps.append(row)
        print(
            f"step {step}: retrieval ref {rec:.6f} ours {row['dist_srec']['retrieval']:.6f} | "
            f"match ref {match:.6f} ours {ours_match:.6f} | user vec rel {row['user_vectors_rel_diff']:.2e} | "
            f"grad rel max {row['grad_rel_diff_max']:.2e} | prompts equal "
            f"{row['user_prompts_identical']}/{row['item_prompts_identical']}",
            flush=True,
        )
        if not row["user_prompts_identical"]:
            for x, y in zip(our_user_text, texts["user"]):
                if x != y:
                    print(f"  first differing user prompt:\n  ours {x!r}\n  ref  {y!r}")
                    break

    params_rel = {n: rel(mine, theirs.reshape(mine.shape)) for n, mine, theirs in pairs(ours, ref)}
    result = {
        "benchmark": "step_parity", "reference": str(ref_dir), "llm_path": str(lm_dir), "data": str(data_dir),
        "teacher": str(teacher_dir), "teacher_mode": a.teacher_mode, "lr": a.lr, "batch_size": a.batch_size,
        "seed": a.seed, "dtype": "float32 on both sides", "steps": steps,
        "params_rel_diff_after": params_rel, "params_rel_diff_after_max": max(params_rel.values()),
    }  # fmt: skip
    if a.eval_users:
        result["test"] = {"dist-srec heads": test_ndcg(ours, cat, a.eval_users)}
        with torch.no_grad():  # the reference's trained heads, into dist-srec's modules
            for _, mine, theirs in pairs(ours, ref):
                mine.copy_(theirs.detach().reshape(mine.shape))
        result["test"]["reference heads"] = test_ndcg(ours, cat, a.eval_users)
        print(f"test sampled metrics, dist-srec's protocol: {result['test']}")
    print(f"after {len(steps)} steps: head parameters rel diff max {result['params_rel_diff_after_max']:.2e}")
    if out_path:
        out_path.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
