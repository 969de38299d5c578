"""Sequence-embedding splice, pure torch: the CPU production path and the Triton kernel's oracle.

Forward. With token ids x [B, T], the frozen table W [V, H], projected item vectors P [R, H], the
slot->row map s [M] and the trainable out vectors O [K, H] for out-token ids o_0..o_{K-1}:

    E[b, t] = P[s[m(b, t)]]   if x[b, t] = hist_id          (m(b, t): rank of (b, t) among the
                                                              [HistoryEmb] positions, row-major)
            = O[k]            if x[b, t] = o_k
            = W[x[b, t]]      otherwise

Gradient, with G = dL/dE [B, T, H]:

    dL/dP[r] = sum over [HistoryEmb] positions (b, t) with s[m(b, t)] = r of G[b, t]
               (accumulates when a row fills several slots)
    dL/dO[k] = sum over (b, t) with x[b, t] = o_k of G[b, t]
    dL/dW    = 0 (the table is read detached; it never receives a gradient)

Shapes: B batch, T tokens, H LLM hidden, V vocabulary, M [HistoryEmb] slots, R item rows, K out kinds.
No Python loop over samples: one gather for the table, one gather of the replacement rows, one
in-place `index_put_` (only a loop over the K <= 2 out kinds to mark their positions).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def splice_source(
    input_ids: Tensor,  # [B, T]
    n_rows: int,  # R
    slot_to_row: Tensor | None,  # [M]
    *,
    hist_id: int,
    out_ids: Sequence[int],
) -> Tensor:  # [B·T] int64
    """src per flattened position: the row of [item_rows; out_vectors] ([R + K, H]) that replaces it,
    or -1 to keep the token's table row. Slot m (row-major order) takes row slot_to_row[m] (row m when
    None); out token out_ids[k] takes row R + k. Raises ValueError if the slot count does not match."""
    flat = input_ids.reshape(-1)
    is_hist = flat == hist_id
    n_slots = int(is_hist.sum())
    rows = slot_to_row if slot_to_row is not None else torch.arange(n_rows, device=flat.device)
    if rows.numel() != n_slots:
        raise ValueError(f"{n_slots} [HistoryEmb] slots in input_ids but {rows.numel()} slot rows given")
    src = torch.full_like(flat, -1, dtype=torch.int64)
    src[is_hist] = rows.to(device=flat.device, dtype=torch.int64)  # boolean-mask assignment: row-major
    for k, oid in enumerate(out_ids):
        src[flat == oid] = n_rows + k
    return src


def seq_embed_reference(
    input_ids: Tensor,  # [B, T] int64
    table: Tensor,  # [V, H] frozen
    item_rows: Tensor,  # [R, H]
    slot_to_row: Tensor | None,  # [M] int64 in [0, R); None means slot m takes row m (R == M)
    out_vectors: Tensor,  # [K, H]
    *,
    hist_id: int,
    out_ids: Sequence[int],  # K token ids, out_ids[k] takes out_vectors[k]
) -> Tensor:  # [B, T, H] in table.dtype
    """Token embeddings with [HistoryEmb] slots and out tokens replaced (see module docstring)."""
    if out_vectors.shape[0] != len(out_ids):
        raise ValueError(f"out_vectors has {out_vectors.shape[0]} rows for {len(out_ids)} out ids")
    emb = F.embedding(input_ids, table.detach())  # [B, T, H], no graph: the table is frozen
    # src[b, t]: row of `ext` that replaces position (b, t), or -1 to keep the table row.
    src = splice_source(input_ids, item_rows.shape[0], slot_to_row, hist_id=hist_id, out_ids=out_ids)
    src = src.view_as(input_ids)
    ext = torch.cat([item_rows, out_vectors]).to(emb.dtype)  # [R + K, H]
    sel = src >= 0
    # The gather's backward is an index_add over src: repeated rows accumulate their gradients.
    emb.index_put_(sel.nonzero(as_tuple=True), ext[src[sel]])
    return emb
