"""Teacher (SASRec) sequence lookup, pure torch: the CPU production path and the Triton kernel's oracle.

Forward, for item ids x [B, L] (0 = padding), the item table E [N+1, D], the position table P [L, D]
and a scale s (sqrt(D) in SASRec):

    out[b, l] = (E[x[b, l]] · s + P[l]) · 1[x[b, l] != 0]                               [B, L, D]

Gradient, with G = dL/dout [B, L, D]:

    dE[i] = s · Σ_{(b, l): x[b, l] = i} G[b, l]   for i != 0;    dE[0] = 0 (padding is masked)
    dP[l] = Σ_b 1[x[b, l] != 0] · G[b, l]
"""

from __future__ import annotations

from torch import Tensor


def seq_lookup_reference(ids: Tensor, item_table: Tensor, pos_table: Tensor, scale: float) -> Tensor:
    """The SASRec input embedding, padding masked (see the module docstring).

    Args:
        ids: [B, L] int64 item ids, 0 = padding.
        item_table: [N+1, D] item embeddings.
        pos_table: [L, D] position embeddings, row l for column l of `ids`.
        scale: sqrt(D) in SASRec.
    Returns:
        [B, L, D] in the dtype of `item_table`.
    """
    keep = (ids != 0).unsqueeze(-1).to(item_table.dtype)  # [B, L, 1]
    return (item_table[ids] * scale + pos_table) * keep
