"""Teacher sequence lookup: out[b, l] = (E[x[b, l]] · sqrt(D) + P[l]) · 1[x[b, l] != 0].

`seq_lookup(...)` is what `dist_srec.models.sasrec.sasrec_embed` calls. The math, shapes and gradient
are in `reference.py` (pure torch: the CPU production path and the oracle) and in `triton_impl.py`.

Why its own op, not a second entry point of `seq_embed`: the contracts differ where kernels care.
The splice copies rows from a frozen table and three sources chosen per token, and only the small
replacement sets receive gradients; this lookup scales, adds a position row and masks padding, and
both of its tables train (the item table's rows by id, the position table's by column). They have
different callers (teacher vs LLM), widths (D = 64 vs H up to 3072) and autograd signatures. What they
do share, the deterministic segmented row sum of the backward, is one kernel
(`seq_embed.triton_impl.segment_sum`) used by both, not two copies.

Dispatch as every op (`.._dispatch.use_triton`, on the item table's device); `DIST_SREC_KERNELS` or
`force_kernel_path(...)` forces a path; triton is imported only when chosen.
"""

from __future__ import annotations

from torch import Tensor

from .._dispatch import use_triton as _use_triton
from .reference import seq_lookup_reference

__all__ = ["seq_lookup", "seq_lookup_reference"]


def seq_lookup(
    ids: Tensor,  # [B, L] int64, 0 = padding
    item_table: Tensor,  # [N+1, D]
    pos_table: Tensor,  # [L, D]
    scale: float,
) -> Tensor:  # [B, L, D] in item_table.dtype
    """(E[ids] · scale + P) with padding rows zeroed; see `reference.seq_lookup_reference`."""
    if _use_triton(item_table, "seq_lookup"):
        from .triton_impl import (
            seq_lookup_triton,  # deferred: triton is optional and must load after TRITON_INTERPRET is set
        )

        return seq_lookup_triton(ids, item_table, pos_table, scale)
    return seq_lookup_reference(ids, item_table, pos_table, scale)
