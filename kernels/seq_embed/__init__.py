"""Fused sequence-embedding splice: token-table gather with [HistoryEmb] / out-token replacement.

`seq_embed(...)` is the entry point the model calls. The math, shapes and gradient are in
`reference.seq_embed_reference`, which is both the CPU production path and the oracle for the Triton
kernel of issue 6.

Dispatch: `_use_triton(tensor)` says whether a Triton kernel could run (triton installed and the
tensor on CUDA, or `TRITON_INTERPRET=1`). No Triton implementation exists yet, so every call runs the
torch reference, on every device.
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
    """Spliced input embeddings [B, T, H]; see `seq_embed_reference` for the contract.

    Always the torch reference for now: a Triton path will be chosen here by `_use_triton` once
    `triton_impl.py` exists (issue 6).
    """
    return seq_embed_reference(
        input_ids, table, item_rows, slot_to_row, out_vectors, hist_id=hist_id, out_ids=out_ids
    )
