"""Run the (CPU-patched) paper code for a budget: N training steps of its own LLM-SRec step, then its own
test evaluation (`generate_batch`) on M test users, with timings, peak RSS and a tie diagnostic.

    cd /work/main && OMP_NUM_THREADS=1 /work/scratch/ref-venv/bin/python \\
        benchmarks/reference/run_reference_budget.py --ref /work/scratch/llmsrec-ref --name ml-100k \\
        --llm_path "$(.venv/bin/python benchmarks/reference/make_lm_dir.py)" --steps 3 --eval_users 20 \\
        --out /work/scratch/ref-smoke.json

Nothing of the reference is copied here: its modules are imported from --ref at run time (run it with
an interpreter that has the reference's requirements, e.g. /work/scratch/ref-venv), and this script
only drives them the way its train_model.py does:
- `random.seed(0)`; `llmrec_model(args)`; `data_partition` of REF/SeqRec/data_NAME/NAME_*.txt;
  `SeqDataset` (one sample per user: history = train[:-1], target = train[-1]) in a shuffled DataLoader
  of --batch_size; Adam(lr --lr, betas (0.9, 0.98)) over model.parameters();
- each step is `model([u, seq, pos, neg], optimizer=..., mode='phase2')` (zero_grad, loss, backward,
  step inside the reference);
- evaluation is `model([u, seq, pos, neg, 0, None, 'original'], mode='generate_batch')` over a
  `SeqDataset_Inference` of the test users (history = train + valid), which first encodes the whole
  catalog through the item prompt, then scores the target against 99 negatives drawn by the reference.
The full upstream loop (validation every num_batch // 10 steps, lr decay, early stop) is main.py's;
see README.md for that command.

Diagnostics gathered without changing the reference's code: a forward hook on `llm.pred_user` keeps the
user vectors it computed, and a wrapper around `make_candidate` keeps its candidate lists, so the
reference's ranks can be recomputed under other tie rules: its own (argsort of -logits, target at index
0: ties go to the target), pessimistic (ties rank above the target, dist-srec's rule) and from fp32
products of the same vectors.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch


def ref_namespace(a: argparse.Namespace) -> Namespace:
    """The Namespace the patched main.py builds (its argument names and defaults)."""
    return Namespace(
        multi_gpu=False, device="cpu", world_size=8, llm=a.llm_name, recsys="sasrec",
        rec_pre_trained_data=a.name, train=True, extract=False, token=False, save_dir=a.save_dir,
        batch_size=a.batch_size, batch_size_infer=a.batch_size_infer, infer_epoch=1, maxlen=a.maxlen,
        num_epochs=10, stage2_lr=a.lr, nn_parameter=False, llm_path=a.llm_path, llm_dtype=a.llm_dtype,
        autocast_dtype=a.autocast_dtype, seed=a.seed,
    )  # fmt: skip


def ndcg10(ranks: np.ndarray) -> float:
    r = np.asarray(ranks, dtype=np.float64)
    return float(np.where(r < 10, 1.0 / np.log2(r + 2.0), 0.0).mean()) if len(r) else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", required=True, type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--llm_path", required=True)
    ap.add_argument("--llm_name", default="smollm2", help="the reference's --llm (used in its file names)")
    ap.add_argument("--llm_dtype", default="bfloat16")
    ap.add_argument("--autocast_dtype", default="bfloat16")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--eval_users", type=int, default=20,
                    help="first this many test users by id (0 = no evaluation, -1 = all)")  # fmt: skip
    ap.add_argument("--batch_size", type=int, default=20)
    ap.add_argument("--batch_size_infer", type=int, default=20)
    ap.add_argument("--maxlen", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--save_dir", default="budget_run")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--load_epoch", default=None, help="skip training: load the heads the reference saved as "
                    "./models/SAVE_DIR/NAME_LLM_EPOCH_*.pt (its best: --save_dir <train save_dir>best)")  # fmt: skip
    ap.add_argument("--candidates", choices=["reference", "dist-srec"], default="reference",
                    help="reference: its own 99 negatives (unseeded np.random, history window excluded); "
                    "dist-srec: dist-srec's sampled-protocol negatives (never-interacted items, seeded by "
                    "(--eval_seed, user)), so the pessimistic metrics equal `dist-srec evaluate`'s protocol")  # fmt: skip
    ap.add_argument(
        "--data", type=Path, default=None, help="dist-srec prepared data dir (for --candidates dist-srec)"
    )
    ap.add_argument("--eval_seed", type=int, default=42)
    ap.add_argument(
        "--no_distill",
        action="store_true",
        help="the no-distillation ablation: the reference's MSE term is replaced by zero at run time "
        "(its uniformity terms stay, as in dist-srec's --model.loss.distill false)",
    )
    ap.add_argument("--teacher_mode", choices=["train", "eval"], default="train",
                    help="train: as the reference's loop (model.train() also sets its SASRec teacher to train "
                    "mode, so the distillation target has dropout); eval: the teacher without dropout")  # fmt: skip
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    if a.candidates == "dist-srec" and a.data is None:
        ap.error("--candidates dist-srec needs --data")
    data_dir = a.data.resolve() if a.data is not None else None

    torch.set_num_threads(a.threads)
    ref = a.ref.resolve()
    os.chdir(ref)  # the reference opens ./SeqRec/... and writes ./models/... relative to its root
    sys.path.insert(0, str(ref))
    from models.seqllm_model import llmrec_model  # the reference, imported from its work tree
    from SeqRec.sasrec.utils import SeqDataset, SeqDataset_Inference, data_partition
    from torch.utils.data import DataLoader

    args = ref_namespace(a)
    if a.seed is not None:
        torch.manual_seed(a.seed)
        np.random.seed(a.seed)
    random.seed(0)  # as train_model_
    t0 = time.perf_counter()
    model = llmrec_model(args).to(args.device)
    t_build = time.perf_counter() - t0
    user_train, user_valid, user_test, usernum, itemnum, eval_set = data_partition(
        a.name, args, path=f"./SeqRec/data_{a.name}/{a.name}"
    )
    num_batch = len(user_train) // a.batch_size
    train_loader = DataLoader(SeqDataset(user_train, len(user_train), itemnum, a.maxlen),
                              batch_size=a.batch_size, pin_memory=True, shuffle=True)  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=a.lr, betas=(0.9, 0.98))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    losses: list[tuple[float, float]] = []
    model.llm.register_forward_hook(lambda _m, _i, out: losses.append((out[1], out[2])))
    step_s: list[float] = []
    if a.load_epoch is not None:
        model.load_model(args, phase2_epoch=a.load_epoch)  # the reference's own loader of its saved heads
        a.steps = 0
    if a.no_distill:  # not the reference: its match loss keeps only the two uniformity terms
        model.llm.mse.forward = lambda x, y: (x * 0.0).sum()  # an nn.MSELoss: its forward, not the module
    model.train()
    if a.teacher_mode == "eval":  # not the reference: its loop leaves the teacher in train mode (dropout)
        model.recsys.model.eval()
    epoch = 0
    while len(step_s) < a.steps:  # as its loop: a fresh shuffle every epoch, steps counted within one
        epoch += 1
        for step, data in enumerate(train_loader):
            if len(step_s) >= a.steps:
                break
            u, seq, pos, neg = (x.numpy() for x in data)
            t = time.perf_counter()
            model([u, seq, pos, neg], optimizer=opt, batch_iter=[epoch, 11, step, num_batch], mode="phase2")
            step_s.append(time.perf_counter() - t)

    result: dict = {
        "reference": str(ref), "name": a.name, "llm_path": a.llm_path, "llm_dtype": a.llm_dtype,
        "autocast_dtype": a.autocast_dtype, "threads": a.threads, "seed": a.seed, "teacher_mode": a.teacher_mode,
        "no_distill": a.no_distill, "lr": a.lr, "epochs_started": epoch,
        "users": usernum, "items": itemnum, "num_batch": num_batch, "trainable_params": trainable,
        "build_s": round(t_build, 2), "train_steps": len(step_s), "step_s": [round(s, 2) for s in step_s],
        "losses_retrieval_match": losses,
    }  # fmt: skip

    if a.eval_users:
        model.eval()
        model.users, model.NDCG, model.HT, model.NDCG_20, model.HIT_20 = 0.0, 0.0, 0.0, 0.0, 0.0
        model.all_embs = None
        users = sorted(u for u in eval_set[1] if len(user_test[u]) >= 1)
        users = users if a.eval_users < 0 else users[: a.eval_users]
        loader = DataLoader(SeqDataset_Inference(user_train, user_valid, user_test, users, itemnum, a.maxlen),
                            batch_size=a.batch_size_infer, pin_memory=True)  # fmt: skip
        user_vecs: list[torch.Tensor] = []
        model.llm.pred_user.register_forward_hook(lambda _m, _i, out: user_vecs.append(out.detach()))
        cands: list[list[int]] = []
        orig = model.make_candidate
        queue: list[list[int]] = []  # --candidates dist-srec: this batch's lists, in the batch's user order

        def recording(*args_, **kw):
            c = queue.pop(0) if queue else orig(*args_, **kw)
            cands.append([int(x) for x in c])
            return c

        model.make_candidate = recording
        if a.candidates == "dist-srec":
            from dist_srec.data.catalog import Catalog
            from dist_srec.eval.protocols import sample_negatives

            cat = Catalog.load(data_dir)
            user_items = cat.user_items()
        batch_s = []
        with torch.no_grad():
            for data in loader:
                u, seq, pos, neg = (x.numpy() for x in data)
                if a.candidates == "dist-srec":
                    negs = sample_negatives(u.astype(np.int64), pos.astype(np.int64), user_items,
                                            cat.num_items, 99, a.eval_seed)  # fmt: skip
                    queue[:] = [[int(p), *map(int, n)] for p, n in zip(pos, negs)]
                t = time.perf_counter()
                model([u, seq, pos, neg, 0, None, "original"], mode="generate_batch")
                batch_s.append(time.perf_counter() - t)
        uv = torch.cat(user_vecs)  # [M, 128] in the autocast dtype
        embs = model.all_embs  # [N, 128]
        from models.seqllm4rec import ref_autocast  # the patched helper

        ref_rank, pess, fp32_pess, ties, dup = [], [], [], 0, 0
        for i, c in enumerate(cands):
            c = np.asarray(c)
            dup += int((c[1:] == c[0]).any())
            with ref_autocast(args):
                logits = torch.mm(embs[c - 1], uv[i].unsqueeze(0).T).squeeze(-1)
            ref_rank.append(int((-logits).argsort().argsort()[0]))
            pess.append(int((logits[1:] >= logits[0]).sum()))
            ties += int((logits[1:] == logits[0]).any())
            f = embs[c - 1].float() @ uv[i].float()
            fp32_pess.append(int((f[1:] >= f[0]).sum()))
        result["eval"] = {
            "candidates": a.candidates,
            "test_users": len(cands),
            "reference_ndcg@10": model.NDCG / max(model.users, 1),
            "reference_hr@10": model.HT / max(model.users, 1),
            "recomputed_ndcg@10_reference_rule": ndcg10(np.array(ref_rank)),
            "recomputed_ndcg@10_pessimistic": ndcg10(np.array(pess)),
            "recomputed_ndcg@10_fp32_products_pessimistic": ndcg10(np.array(fp32_pess)),
            "recomputed_hr@10_pessimistic": float((np.array(pess) < 10).mean()),
            "recomputed_hr@10_fp32_products_pessimistic": float((np.array(fp32_pess) < 10).mean()),
            # per test user, in user-id order: any rank metric can be recomputed
            "ranks_pessimistic": pess,
            "ranks_fp32_products_pessimistic": fp32_pess,
            "users_with_a_tie_at_the_target": ties,
            "users_whose_negatives_include_the_target": dup,
            "score_dtype": str(uv.dtype),
            "first_batch_s_incl_catalog_encoding": round(batch_s[0], 2),
            "later_batches_s": [round(s, 2) for s in batch_s[1:]],
            "catalog_items_encoded": int(embs.shape[0]),
        }
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if a.out is not None:
        a.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
