"""Teacher objectives (see `dist_srec.train.teacher` for the math): the reference BCE with one
negative per position, an optional sampled softmax over K negatives shared by the batch, and an optional
softmax over the whole catalog.

Both take the (possibly DDP-wrapped) model and read logits through its forward, so DDP all-reduces.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor


def sample_train_negatives(
    seen: Tensor, shape: tuple[int, int], num_items: int, gen: torch.Generator
) -> Tensor:
    """[B, L] items drawn uniformly from 1..N, redrawn while in the row's `seen` [B, S] (0s ignored).

    Redraws stop after 100 rounds (only reachable when a user has seen nearly the whole catalog).
    """
    neg = torch.randint(1, num_items + 1, shape, generator=gen)
    for _ in range(100):
        bad = (neg[:, :, None] == seen[:, None, :]).any(-1)
        n_bad = int(bad.sum())
        if n_bad == 0:
            break
        neg[bad] = torch.randint(1, num_items + 1, (n_bad,), generator=gen)
    return neg


def teacher_loss(
    model: torch.nn.Module, batch: Mapping[str, Tensor], num_items: int, gen: torch.Generator, max_len: int
) -> tuple[Tensor, int]:
    """The module docstring's BCE loss for one batch, and the number of positions it averages over.

    `model` may be DDP-wrapped: the logits come from its forward, so gradients are all-reduced.
    """
    hist = batch["history"][:, -max_len:]  # [B, L]
    target = batch["target"]
    valid = (hist != 0) & batch["mask"].bool()[:, None]
    pos = torch.cat([hist[:, 1:], target[:, None]], 1) * valid
    neg = (
        sample_train_negatives(torch.cat([hist, target[:, None]], 1), tuple(hist.shape), num_items, gen)
        * valid
    )
    logits = model(hist, torch.stack([pos, neg], -1))  # [B, L, 2]
    n = int(valid.sum())
    if n == 0:
        return logits.sum() * 0.0, 0
    pos_logit, neg_logit = logits[..., 0][valid], logits[..., 1][valid]
    loss = F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit))
    loss = loss + F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit))
    return loss, n


def sampled_softmax_loss(
    model: torch.nn.Module,
    batch: Mapping[str, Tensor],
    num_items: int,
    gen: torch.Generator,
    max_len: int,
    num_negatives: int,
) -> tuple[Tensor, int]:
    """The module docstring's sampled-softmax loss for one batch, and the number of positions.

    The features come from `model`'s forward (DDP-safe); the item table is read from the unwrapped
    module, so its gradient sums both uses before DDP reduces it.
    """
    hist = batch["history"][:, -max_len:]
    valid = (hist != 0) & batch["mask"].bool()[:, None]
    pos = torch.cat([hist[:, 1:], batch["target"][:, None]], 1)
    table = getattr(model, "module", model).item_emb.weight  # [N+1, D]
    negs = torch.randint(1, num_items + 1, (num_negatives,), generator=gen).to(hist.device)
    h = model(hist)[valid]  # [P, D]
    p = pos[valid]
    pos_logit = (h * table[p]).sum(-1, keepdim=True)  # [P, 1]
    neg_logit = (h @ table[negs].T).masked_fill(negs[None, :] == p[:, None], float("-inf"))  # [P, K]
    n = int(valid.sum())
    if n == 0:
        return h.sum() * 0.0, 0
    logits = torch.cat([pos_logit, neg_logit], 1)
    return F.cross_entropy(logits, torch.zeros(n, dtype=torch.int64, device=logits.device)), n


def softmax_loss(
    model: torch.nn.Module, batch: Mapping[str, Tensor], max_len: int, chunk: int = 4096
) -> tuple[Tensor, int]:
    """Cross-entropy of the next item p_l against every item of the catalog, mean over the P valid
    positions: mean_l -log softmax(E[1:] h_l)[p_l - 1], E[1:] the N real items (padding row excluded).

    Logits [P, N] are formed `chunk` positions at a time under activation checkpointing, so the peak is
    chunk x N floats however long the batch; the gradient is exact. The features come from `model`'s
    forward (DDP-safe); the table is read from the unwrapped module (see `sampled_softmax_loss`).
    """
    hist = batch["history"][:, -max_len:]
    valid = (hist != 0) & batch["mask"].bool()[:, None]
    pos = torch.cat([hist[:, 1:], batch["target"][:, None]], 1)
    table = getattr(model, "module", model).item_emb.weight  # [N+1, D]
    h = model(hist)[valid]  # [P, D]
    p = pos[valid] - 1  # class index among items 1..N
    n = int(valid.sum())
    if n == 0:
        return h.sum() * 0.0, 0

    def part(h_: Tensor, p_: Tensor, items: Tensor) -> Tensor:
        return F.cross_entropy(h_ @ items.T, p_, reduction="sum")

    total = h.new_zeros(())
    for i in range(0, n, chunk):
        hi, pi = h[i : i + chunk], p[i : i + chunk]
        total = total + torch.utils.checkpoint.checkpoint(part, hi, pi, table[1:], use_reentrant=False)
    return total / n, n
