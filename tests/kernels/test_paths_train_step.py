"""Integration: a training step gives the same loss and gradients on the torch and Triton paths.

LLM-SRec (tiny random LM, a real SASRec teacher) exercises the splice and the distillation loss
through the model's own dispatch; a SASRec step exercises the teacher lookup's backward. Tolerances:
rtol = 1e-4, atol = 1e-6 (the paths differ only in fp32 summation order).
"""

from __future__ import annotations

import torch

from dist_srec.kernels._dispatch import force_kernel_path
from dist_srec.models.frozen_lm import load_frozen_lm
from dist_srec.models.llmsrec import LLMSRec, LLMSRecConfig
from dist_srec.models.lm_config import LLMConfig
from dist_srec.models.sasrec import SASRec, SASRecConfig

TITLES = [None] + [f"Film {w} ({1990 + i})" for i, w in enumerate("abcdefghijk")]
N = len(TITLES) - 1


def _step(
    model: torch.nn.Module, loss_fn, path: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # same dropout masks on both paths
    with force_kernel_path(path):  # type: ignore[arg-type]
        terms = loss_fn()
        terms["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in terms.items()}, grads


def _compare(model, loss_fn) -> dict[str, torch.Tensor]:
    t_terms, t_grads = _step(model, loss_fn, "torch")
    k_terms, k_grads = _step(model, loss_fn, "triton")
    assert t_terms.keys() == k_terms.keys() and t_grads.keys() == k_grads.keys()
    for k in t_terms:
        torch.testing.assert_close(k_terms[k], t_terms[k], rtol=1e-4, atol=1e-6, msg=k)
    for n in t_grads:
        torch.testing.assert_close(k_grads[n], t_grads[n], rtol=1e-4, atol=1e-6, msg=n)
    return t_grads


def test_llmsrec_step_same_on_both_paths(triton_path, device, tmp_path) -> None:
    lm = load_frozen_lm(LLMConfig(path="tiny", cache_dir=str(tmp_path), dtype="float32"))
    torch.manual_seed(0)
    teacher = SASRec(SASRecConfig(num_items=N, hidden=16, max_len=6, dropout=0.0))
    model = LLMSRec(lm, teacher, TITLES, LLMSRecConfig(head_hidden=32)).to(device).train()
    history = torch.tensor([[0, 0, 0, 1, 2], [3, 4, 5, 6, 7], [0, 0, 0, 0, 9]])
    batch = {
        "history": history,
        "history_ts": torch.where(history > 0, 1_600_000_000 + history * 86400, 0),
        "target": torch.tensor([3, 8, 10]),
    }
    neg = torch.tensor([[4, 5, 6], [1, 2, 9], [1, 3, 3]])  # a repeated negative
    grads = _compare(model, lambda: model.loss(batch, neg))
    # every trainable parameter (item_proj and the out vectors via the splice) got a gradient, nothing else
    assert set(grads) == set(model.trainable_parameter_names())
    assert grads["heads.user_out"].abs().sum() > 0 and grads["heads.item_out"].abs().sum() > 0


def test_sasrec_step_same_on_both_paths(triton_path, device) -> None:
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(num_items=N, hidden=16, max_len=7, dropout=0.2)).to(device).train()
    history = torch.tensor([[0, 0, 1, 2, 3, 2, 5], [4, 4, 6, 7, 8, 9, 10], [0, 0, 0, 0, 0, 11, 1]]).to(device)
    cand = torch.randint(1, N + 1, (3, 7, 2), generator=torch.Generator().manual_seed(0)).to(device)

    def loss_fn() -> dict[str, torch.Tensor]:
        logits = model(history, cand)
        labels = torch.zeros_like(logits)
        labels[..., 0] = 1.0
        mask = (history != 0).unsqueeze(-1).float()
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, weight=mask)
        return {"loss": bce}

    grads = _compare(model, loss_fn)
    assert grads["item_emb.weight"].abs().sum() > 0 and grads["pos_emb.weight"].abs().sum() > 0
