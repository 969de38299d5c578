"""The reference-equivalent mode of benchmarks/bench_vs_reference.py computes what the default path
computes (its speed ratio compares equal work): same loss terms and head gradients on the tiny LM,
with every one of its execution choices active (full LM with logits and a mask, no dedup, one padded
forward per pass, no prompt-head reuse)."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.bench_vs_reference import reference_equivalent
from dist_srec.data.catalog import Catalog
from dist_srec.models.llmsrec import LLMSRecConfig
from dist_srec.models.lm_config import LLMConfig
from dist_srec.train.srec_build import build_model


def _terms_and_grads(model, batch, neg):
    model.train()
    model.zero_grad(set_to_none=True)
    terms = model.loss(batch, neg)
    terms["loss"].backward()
    return {k: v.detach() for k, v in terms.items()}, {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }


def test_reference_equivalent_mode_computes_the_same(srec_setup: tuple[Path, Path]) -> None:
    data, teacher = srec_setup
    cat = Catalog.load(data)
    cfg = LLMSRecConfig(head_hidden=32, max_tokens_per_forward=64, bucket_min_tokens=0)  # several buckets
    plain, _ = build_model(LLMConfig(path="tiny", dtype="float32"), teacher, cat, cfg, torch.device("cpu"))
    ref, _ = build_model(LLMConfig(path="tiny", dtype="float32"), teacher, cat, LLMSRecConfig(head_hidden=32),
                         torch.device("cpu"))  # fmt: skip
    reference_equivalent(ref, autocast=None)
    assert plain.prefixes and not ref.prefixes
    history = torch.tensor([[0, 0, 0, 1, 2, 3], [4, 5, 6, 7, 8, 9], [0, 0, 0, 0, 0, 10]])
    batch = {"history": history, "history_ts": torch.where(history > 0, 1_600_000_000 + history * 86400, 0),
             "target": torch.tensor([4, 10, 11])}  # fmt: skip
    neg = torch.tensor(
        [[5, 6, 7], [1, 2, 2], [1, 3, 4]]
    )  # a repeated negative: deduplicated by one mode only
    t_plain, g_plain = _terms_and_grads(plain, batch, neg)
    t_ref, g_ref = _terms_and_grads(ref, batch, neg)
    for k in t_plain:
        torch.testing.assert_close(t_ref[k], t_plain[k], rtol=1e-4, atol=1e-5, msg=k)
    assert g_plain.keys() == g_ref.keys() and g_plain
    for n in g_plain:
        torch.testing.assert_close(g_ref[n], g_plain[n], rtol=1e-3, atol=1e-5, msg=n)
