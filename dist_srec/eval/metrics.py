"""Ranking metrics from the rank of each user's target item.

A rank is 0-based: the number of candidates placed above the target. Ties are broken
pessimistically: a candidate whose score equals the target's counts as above it, so

    rank = #{ c != target : score[c] >= score[target] }

NaN scores are treated as -inf (a NaN target ranks last). The reference implementations break ties
the other way: pmixer/SASRec.pytorch puts the target at index 0 of the candidates and takes its position
in an argsort, which places it before tied negatives (optimistic); so does LLM-SRec's own evaluation
(target at index 0, `argsort().argsort()`, scores in the autocast dtype, so ties are common there;
benchmarks/reference/README.md). With continuous fp32 scores ties are rare and the difference is small;
a model that scores everything equal gets rank N-1 here, never a perfect hit.

For K in `ks` and users u with rank r_u (n users):

    HR@K   = mean_u 1[r_u < K]
    NDCG@K = mean_u 1[r_u < K] / log2(r_u + 2)        (one relevant item, so IDCG = 1)
    MRR    = mean_u 1 / (r_u + 1)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

DEFAULT_KS: tuple[int, ...] = (10, 20)


def _clean(scores: Tensor) -> Tensor:
    return torch.nan_to_num(scores.float(), nan=float("-inf"))


def rank_of_target(scores: Tensor, target_index: int | Tensor = 0) -> Tensor:
    """Pessimistic 0-based rank of the target among each row's candidates.

    Args:
        scores: [B, N] candidate scores.
        target_index: column of the target (int), or [B] int64 per row. Default 0.
    Returns:
        [B] int64 ranks in [0, N-1].
    """
    scores = _clean(scores)
    b = scores.shape[0]
    idx = torch.as_tensor(target_index, dtype=torch.int64, device=scores.device).expand(b)
    tgt = scores.gather(1, idx[:, None])  # [B, 1]
    above = scores >= tgt  # the target itself is always counted once here
    return above.sum(1).to(torch.int64) - 1


def count_above(scores: Tensor, target_scores: Tensor) -> Tensor:
    """[B, C] candidate scores (target excluded), [B] target scores -> [B] #{c: score >= target}."""
    return (_clean(scores) >= _clean(target_scores)[:, None]).sum(1).to(torch.int64)


def metric_sums(ranks: Tensor, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Sums (not means) of each metric over users, plus `count`: additive across batches and ranks.

    Args:
        ranks: [n] int64 0-based ranks.
    """
    r = ranks.to(torch.float64)
    out: dict[str, float] = {"count": float(r.numel())}
    for k in ks:
        hit = r < k
        out[f"hr@{k}"] = float(hit.sum())
        out[f"ndcg@{k}"] = float(torch.where(hit, 1.0 / torch.log2(r + 2.0), 0.0).sum())
    out["mrr"] = float((1.0 / (r + 1.0)).sum())
    return out


def empty_sums(ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """All-zero `metric_sums`: the same keys on every rank, even one with no users."""
    return metric_sums(torch.zeros(0, dtype=torch.int64), ks)


def finalize(sums: dict[str, float]) -> dict[str, float]:
    """Means from `metric_sums` (possibly summed over batches or ranks); `count` is kept as is."""
    n = sums["count"]
    return {k: (v if k == "count" else (v / n if n else float("nan"))) for k, v in sums.items()}


def add_sums(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Element-wise sum of two `metric_sums` dicts (an empty `a` is allowed)."""
    return {k: a.get(k, 0.0) + v for k, v in b.items()}


def metrics_from_ranks(ranks: Tensor, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """HR@K, NDCG@K for K in `ks`, MRR (means) and `count`, from [n] 0-based ranks."""
    return finalize(metric_sums(ranks, ks))
