"""Teacher sequence lookup in Triton: one fused pass forward, segmented row sums backward.

Forward, for ids x [B, L] (0 = padding), E [N+1, D], P [L, D], scale s, over the N = B·L positions
n = (b, l):

    out[n] = (E[x[n]] · s + P[l]) · 1[x[n] != 0]                                         [B, L, D]

One program computes a tile of BLOCK_N positions x BLOCK_D columns: gather, scale, add, mask and
store in one pass, in fp32 (fp64 for fp64 inputs), where torch runs four kernels and materialises
E[x] and E[x]·s. Padding positions skip the item load (masked).

Backward, with G = dL/dout [N, D]:

    dE[i] = s · Σ_{n: x[n] = i, i != 0} G[n]   (dE[0] = 0)         dP[l] = Σ_{n = (b, l): x[n] != 0} G[n]

Both are segmented row sums over the non-padding positions, grouped by item id and by column l; they
reuse the splice's deterministic sort-based kernel (`seq_embed.triton_impl.segment_sum`: no atomics,
every destination row written once, zeros where a row was never used, so no memset of the dense
[N+1, D] gradient). Shapes: B batch, L history length, D teacher hidden, N items.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..seq_embed.triton_impl import acc_dtype, segment_sum, segments, tiles


@triton.jit
def _lookup_fwd_kernel(
    ids_ptr,  # [N] item ids, 0 = padding
    item_ptr,  # [N_items + 1, D]
    pos_ptr,  # [L, D]
    out_ptr,  # [N, D]
    n_pos,
    L,
    D,
    scale,
    ACC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pos = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    pmask = pos < n_pos
    cmask = cols < D
    x = tl.load(ids_ptr + pos, mask=pmask, other=0).to(tl.int64)
    col = pos % L
    m2 = pmask[:, None] & cmask[None, :]
    keep = m2 & (x != 0)[:, None]
    c = cols[None, :]
    e = tl.load(item_ptr + x[:, None] * D + c, mask=keep, other=0.0).to(ACC)
    p = tl.load(pos_ptr + col[:, None] * D + c, mask=keep, other=0.0).to(ACC)
    out = tl.where(keep, e * scale + p, 0.0)
    tl.store(out_ptr + pos[:, None] * D + c, out.to(out_ptr.dtype.element_ty), mask=m2)


class SeqLookupFunction(torch.autograd.Function):
    """Autograd wrapper: forward `_lookup_fwd_kernel`, backward two `segment_sum` launches."""

    @staticmethod
    def forward(ctx, ids: Tensor, item_table: Tensor, pos_table: Tensor, scale: float) -> Tensor:
        b, length = ids.shape
        d = item_table.shape[1]
        if pos_table.shape != (length, d):
            raise ValueError(f"pos_table is {tuple(pos_table.shape)}, expected ({length}, {d})")
        dtype = torch.promote_types(item_table.dtype, pos_table.dtype)
        out = torch.empty(b, length, d, dtype=dtype, device=item_table.device)
        n = b * length
        if n and d:
            block_n, block_d = tiles(n, d)
            grid = (triton.cdiv(n, block_n), triton.cdiv(d, block_d))
            _lookup_fwd_kernel[grid](
                ids.reshape(-1).contiguous(), item_table.contiguous(), pos_table.contiguous(), out,
                n, length, d, float(scale),
                ACC=acc_dtype(item_table, pos_table), BLOCK_N=block_n, BLOCK_D=block_d,
            )  # fmt: skip
        ctx.save_for_backward(ids)
        ctx.meta = (item_table.shape, item_table.dtype, pos_table.shape, pos_table.dtype, float(scale))
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        (ids,) = ctx.saved_tensors
        item_shape, item_dtype, pos_shape, pos_dtype, scale = ctx.meta
        g = grad_out.reshape(-1, grad_out.shape[-1]).contiguous()
        flat = ids.reshape(-1)
        pad = flat == 0
        d_item = d_pos = None
        if ctx.needs_input_grad[1]:
            d_item = torch.empty(item_shape, dtype=item_dtype, device=g.device)
            order, offsets = segments(flat.masked_fill(pad, -1), item_shape[0])
            segment_sum(g, order, offsets, d_item, scale=scale)
        if ctx.needs_input_grad[2]:
            d_pos = torch.empty(pos_shape, dtype=pos_dtype, device=g.device)
            col = torch.arange(flat.numel(), device=flat.device) % ids.shape[1]
            order, offsets = segments(col.masked_fill(pad, -1), pos_shape[0])
            segment_sum(g, order, offsets, d_pos)
        return None, d_item, d_pos, None


def seq_lookup_triton(ids: Tensor, item_table: Tensor, pos_table: Tensor, scale: float) -> Tensor:
    """The Triton lookup; same contract as `reference.seq_lookup_reference`. [B, L] -> [B, L, D]."""
    return SeqLookupFunction.apply(ids, item_table, pos_table, scale)
