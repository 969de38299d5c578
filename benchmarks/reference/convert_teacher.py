"""A dist-srec SASRec teacher checkpoint -> the checkpoint the paper's code (Sein-Kim/LLM-SRec) loads, so
both sides distil the very same teacher weights; optionally verified numerically against the
reference's own SASRec class.

    .venv/bin/python benchmarks/reference/convert_teacher.py --teacher /work/scratch/teacher-ml-100k/best \\
        --data /work/scratch/data/ml-100k --ref /work/scratch/llmsrec-ref --name ml-100k --verify

Reference format (read by its `models/recsys_model.py` `load_checkpoint` + `RecSys`): exactly one `*.pth`
file in REF/SeqRec/sasrec/NAME/, holding `torch.save([kwargs, state_dict])` with kwargs = {"user_num",
"item_num", "args"}, `args` an argparse.Namespace of its SASRec trainer (it reads hidden_units,
num_blocks, num_heads, dropout_rate, maxlen, nn_parameter, device; device is overwritten on load).
It is unpickled with weights_only=False.

Mapping (dist-srec `dist_srec/models/sasrec.py` -> reference `SeqRec/sasrec/model.py`); the maths of the
two is the same block (q = LN(x); x = q + Attn(q, x, x) causal; x = LN(x); x = x + FFN(x); x *= mask;
last LN; embeddings E[s]*sqrt(D) + P[l], padding zeroed; no key-padding mask on either side):

    item_emb.weight                 -> item_emb.weight                  [N+1, D]
    pos_emb.weight                  -> pos_emb.weight                   [max_len, D]
    blocks.i.attn_norm.*            -> attention_layernorms.i.*
    blocks.i.attn.{q,k,v}_proj.weight  -> attention_layers.i.in_proj_weight  (concatenated q;k;v, [3D, D])
    blocks.i.attn.{q,k,v}_proj.bias    -> attention_layers.i.in_proj_bias    ([3D])
    blocks.i.attn.out_proj.*        -> attention_layers.i.out_proj.*
    blocks.i.ffn_norm.*             -> forward_layernorms.i.*
    blocks.i.ffn.fc1.weight [D, D]  -> forward_layers.i.conv1.weight [D, D, 1]  (kernel-1 Conv1d), bias as is
    blocks.i.ffn.fc2.*              -> forward_layers.i.conv2.*
    last_norm.*                     -> last_layernorm.*

What does not map: dist-srec's `attn_dropout` (separate attention-weight dropout) has no counterpart, the
reference uses one dropout_rate for embeddings, attention weights and FFN; the conversion refuses a
teacher whose attn_dropout differs from its dropout unless --allow-dropout-mismatch (dropout only acts
in train mode, but the reference runs its teacher in train mode during LLM-SRec training, see the
README). LayerNorm eps is fixed at 1e-8 in the reference; a teacher with another ln_eps is refused.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dist_srec.data.catalog import Catalog
from dist_srec.train.teacher import load_teacher


def convert_state(sd: dict[str, torch.Tensor], num_blocks: int) -> dict[str, torch.Tensor]:
    out = {"item_emb.weight": sd["item_emb.weight"], "pos_emb.weight": sd["pos_emb.weight"]}
    for i in range(num_blocks):
        b = f"blocks.{i}."
        for p in ("weight", "bias"):
            out[f"attention_layernorms.{i}.{p}"] = sd[b + f"attn_norm.{p}"]
            out[f"attention_layers.{i}.in_proj_{p}"] = torch.cat(
                [sd[b + f"attn.{n}_proj.{p}"] for n in ("q", "k", "v")], 0
            )
            out[f"attention_layers.{i}.out_proj.{p}"] = sd[b + f"attn.out_proj.{p}"]
            out[f"forward_layernorms.{i}.{p}"] = sd[b + f"ffn_norm.{p}"]
        for src, dst in (("fc1", "conv1"), ("fc2", "conv2")):
            out[f"forward_layers.{i}.{dst}.weight"] = sd[b + f"ffn.{src}.weight"].unsqueeze(-1)
            out[f"forward_layers.{i}.{dst}.bias"] = sd[b + f"ffn.{src}.bias"]
    out["last_layernorm.weight"] = sd["last_norm.weight"]
    out["last_layernorm.bias"] = sd["last_norm.bias"]
    return {k: v.detach().float().contiguous().clone() for k, v in out.items()}


def reference_args(cfg, name: str) -> Namespace:
    """The Namespace the reference's SASRec trainer would have pickled (its argument names)."""
    return Namespace(
        dataset=name,
        batch_size=128,
        lr=0.001,
        maxlen=cfg.max_len,
        hidden_units=cfg.hidden,
        num_blocks=cfg.num_blocks,
        num_epochs=0,
        num_heads=cfg.num_heads,
        dropout_rate=cfg.dropout,
        l2_emb=0.0,
        device="cpu",
        inference_only=False,
        nn_parameter=False,
        state_dict_path=None,
        is_hpu=False,
    )


def load_reference_sasrec_class(ref: Path):
    """The reference's SASRec class, imported from its work tree at run time (nothing copied)."""
    spec = importlib.util.spec_from_file_location(
        "llmsrec_ref_sasrec_model", ref / "SeqRec" / "sasrec" / "model.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.SASRec


def test_histories(data: Path, max_len: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n test samples from dist-srec's shards: users, left-padded histories [n, max_len], targets."""
    import tarfile

    man = json.loads((data / "manifest.json").read_text())
    users, hists, targets = [], [], []
    for entry in man["shards"]["test"]:
        with tarfile.open(data / entry["file"]) as tar:
            for m in tar.getmembers():
                if not m.name.endswith(".json"):
                    continue
                s = json.loads(tar.extractfile(m).read())
                h = s["history"][-max_len:]
                row = np.zeros(max_len, dtype=np.int64)
                row[max_len - len(h) :] = h
                users.append(s["user"])
                hists.append(row)
                targets.append(s["target"])
                if len(users) == n:
                    return np.array(users), np.stack(hists), np.array(targets)
    return np.array(users), np.stack(hists), np.array(targets)


def verify(ref: Path, pth: Path, teacher, data: Path, n_users: int) -> dict:
    from dist_srec.eval.metrics import metrics_from_ranks, rank_of_target
    from dist_srec.eval.protocols import sample_negatives

    SASRecRef = load_reference_sasrec_class(ref)
    kwargs, state = torch.load(pth, map_location="cpu", weights_only=False)  # as the reference loads it
    kwargs["args"].device = "cpu"
    ref_model = SASRecRef(**kwargs)
    ref_model.load_state_dict(state)  # strict, as the reference
    ref_model.eval()
    teacher.eval()
    users, hist, targets = test_histories(data, teacher.cfg.max_len, n_users)
    n_items = teacher.cfg.num_items
    with torch.no_grad():
        u_ref = ref_model.log2feats(hist)[:, -1, :]  # the reference's user vector (its mode='log_only')
        u_ds = teacher.user_vector(torch.from_numpy(hist))
        all_items = np.arange(1, n_items + 1)
        s_ref = ref_model.predict(users, hist, all_items)  # [n, N]
        s_ds = u_ds @ teacher.item_embeddings()[1:].T
        cat = Catalog.load(data)
        negs = sample_negatives(users, targets, cat.user_items(), n_items, 99, 42)
        cands = np.concatenate([targets[:, None], negs], 1)
        samp_ref = torch.gather(s_ref, 1, torch.from_numpy(cands - 1))
        samp_ds = torch.gather(s_ds, 1, torch.from_numpy(cands - 1))
    r_ref, r_ds = rank_of_target(samp_ref, 0), rank_of_target(samp_ds, 0)
    rel = lambda a, b: float((a - b).abs().max() / b.abs().max())  # noqa: E731
    return {
        "users": len(users),
        "user_vector_max_abs_diff": float((u_ref - u_ds).abs().max()),
        "user_vector_rel_diff": rel(u_ref, u_ds),
        "full_scores_max_abs_diff": float((s_ref - s_ds).abs().max()),
        "full_scores_rel_diff": rel(s_ref, s_ds),
        "full_top10_identical_fraction": float(
            (torch.topk(s_ref, 10).indices == torch.topk(s_ds, 10).indices).all(1).float().mean()
        ),
        "sampled_ranks_identical_fraction": float((r_ref == r_ds).float().mean()),
        "sampled_ndcg@10_reference_class": metrics_from_ranks(r_ref)["ndcg@10"],
        "sampled_ndcg@10_dist_srec": metrics_from_ranks(r_ds)["ndcg@10"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True, type=Path, help="dist-srec teacher checkpoint dir (OUT/best)")
    ap.add_argument(
        "--data", required=True, type=Path, help="the prepared data dir the teacher was trained on"
    )
    ap.add_argument("--ref", required=True, type=Path, help="the reference's work tree (its root)")
    ap.add_argument(
        "--name", required=True, help="dataset name the reference is run with (--rec_pre_trained_data)"
    )
    ap.add_argument(
        "--replace",
        action="store_true",
        help="delete other *.pth in the target dir (the reference refuses a dir with more than one)",
    )
    ap.add_argument("--allow-dropout-mismatch", action="store_true")
    ap.add_argument("--verify", action="store_true", help="compare with the reference's SASRec class")
    ap.add_argument("--verify-users", type=int, default=256)
    args = ap.parse_args(argv)

    cat = Catalog.load(args.data)
    teacher, _ = load_teacher(args.teacher, catalog=cat.identity())
    cfg = teacher.cfg
    if cfg.ln_eps != 1e-8:
        raise SystemExit(f"teacher ln_eps={cfg.ln_eps}: the reference's LayerNorms use 1e-8")
    if cfg.attn_dropout is not None and cfg.attn_dropout != cfg.dropout and not args.allow_dropout_mismatch:
        raise SystemExit(
            f"teacher attn_dropout={cfg.attn_dropout} != dropout={cfg.dropout}: the reference has one "
            "dropout_rate (pass --allow-dropout-mismatch to write dropout_rate=dropout)"
        )
    state = convert_state(teacher.state_dict(), cfg.num_blocks)
    kwargs = {"user_num": cat.num_users, "item_num": cfg.num_items, "args": reference_args(cfg, args.name)}

    out_dir = args.ref / "SeqRec" / "sasrec" / args.name
    out_dir.mkdir(parents=True, exist_ok=True)
    fname = (
        f"SASRec_from_dist-srec.layer={cfg.num_blocks}.head={cfg.num_heads}.hidden={cfg.hidden}"
        f".maxlen={cfg.max_len}.pth"
    )
    others = [p for p in out_dir.glob("*.pth") if p.name != fname]
    if others and not args.replace:
        raise SystemExit(
            f"{out_dir} already holds {[p.name for p in others]}; the reference needs exactly one "
            ".pth there (pass --replace to delete them)"
        )
    for p in others:
        p.unlink()
    pth = out_dir / fname
    torch.save([kwargs, state], pth)
    info = {
        "written": str(pth),
        "teacher": str(args.teacher.resolve()),
        "teacher_config": {
            "num_items": cfg.num_items,
            "hidden": cfg.hidden,
            "num_blocks": cfg.num_blocks,
            "num_heads": cfg.num_heads,
            "dropout": cfg.dropout,
            "attn_dropout": cfg.attn_dropout,
            "max_len": cfg.max_len,
        },
        "user_num": cat.num_users,
        "note": f"run the reference with --maxlen {cfg.max_len} (its default 128): its LLM-SRec feeds the "
        "teacher histories of width --maxlen and the position table has max_len rows",
    }
    if args.verify:
        info["verify"] = verify(args.ref, pth, teacher, args.data, args.verify_users)
    (out_dir / "dist_srec_source.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
