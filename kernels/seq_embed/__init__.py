"""Fused sequence-embedding splice: token-table gather with [HistoryEmb] / out-token replacement.

`seq_embed(...)` is the entry point the model calls. The math, shapes and gradient are in
`reference.seq_embed_reference` (pure torch: the CPU production path and the oracle) and in
`triton_impl` (one fused gather pass forward; a deterministic sort-based segmented sum backward).

Dispatch (`.._dispatch.use_triton`, decided on the table's device): the Triton kernels when triton
imports and the table is on CUDA or `TRITON_INTERPRET=1`; the reference otherwise.
`DIST_SREC_KERNELS=torch|triton|auto` or `force_kernel_path(...)` forces either path. `triton_impl`
is imported only when chosen, so this package imports without triton.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from .._dispatch import use_triton as _use_triton
from .reference import seq_embed_reference

__all__ = ["_use_triton", "seq_embed", "seq_embed_reference"]


def seq_embed(
    input_ids: Tensor,  # [B, T]
    table: Tensor,  # [V, H] frozen
    item_rows: Tensor,  # [R, H]
    slot_to_row: Tensor | None,  # [M]
    out_vectors: Tensor,  # [K, H]
    *,
    hist_id: int,
    out_ids: Sequence[int],
) -> Tensor:  # [B, T, H]
    """Spliced input embeddings [B, T, H]; see `seq_embed_reference` for the contract."""
    if _use_triton(table, "seq_embed"):
        from .triton_impl import (
            seq_embed_triton,  # deferred: triton is optional and must load after TRITON_INTERPRET is set
        )

        fn = seq_embed_triton
    else:
        fn = seq_embed_reference
    return fn(input_ids, table, item_rows, slot_to_row, out_vectors, hist_id=hist_id, out_ids=out_ids)
