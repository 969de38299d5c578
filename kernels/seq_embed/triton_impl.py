"""Fused sequence-embedding splice in Triton: one gather pass forward, a segmented row sum backward.

Forward. With token ids x [B, T] (N = B·T positions n), the frozen table W [V, H], projected item rows
P [R, H], the slot->row map s [M] and out vectors O [K, H] for out-token ids o_0..o_{K-1}:

    src[n] = s[m(n)]     if x[n] = hist_id      (m(n): rank of n among the [HistoryEmb] positions)
           = R + k       if x[n] = o_k
           = -1          otherwise
    E[n]   = P[src[n]] if 0 <= src[n] < R,  O[src[n] - R] if src[n] >= R,  W[x[n]] if src[n] = -1

One program copies a tile of BLOCK_N positions x BLOCK_H columns, choosing per position among three
masked loads (masked-off lanes read nothing), where torch runs a gather, a concatenation, a second
gather and an index_put. The replacement rows are cast to the table's dtype by torch first (R + K
rows), so the output is a bit-exact copy, as the reference's.

Backward, with G = dL/dE [N, H]:

    dP[r] = Σ_{n: src[n] = r} G[n],     dO[k] = Σ_{n: src[n] = R + k} G[n],     dW = 0

Repeated rows are accumulated by a sort-based segmented reduction, not atomics: the spliced positions
are stably sorted by `src` into CSR segments, and each program owns BLOCK_R destination rows and sums
their segments BLOCK_P source rows at a time, in fp32, then stores each row once in its own dtype.
Why not atomics: the sum is then deterministic (a fixed order, bitwise reproducible across runs and
ranks); the two out-vector rows collect one position per prompt, a B-way atomic hot spot; rows with
an empty segment are written as zeros, so the output needs no memset; and bf16/fp16 destinations need
no fp32 scratch copy. The sort only covers the S = M + B spliced positions (not all B·T), costs
O(S log S) on integers, and runs in backward only, so inference never pays for it. The same kernel
(`segment_sum`) computes the teacher lookup's gradients (`..seq_lookup`).

Precision: every load is cast to the accumulation dtype (fp32, or fp64 for fp64 inputs, which only
gradcheck uses) right after it is read: the interpreter's bf16 arithmetic is broken and the sums
want fp32 anyway. The frozen table is never written and gets no gradient.

Shapes: B batch, T tokens, H hidden, V vocabulary, M [HistoryEmb] slots, R item rows, K out kinds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from .reference import splice_source


def acc_dtype(*tensors: Tensor) -> tl.dtype:
    """fp64 if any input is fp64 (gradcheck), else fp32."""
    return tl.float64 if any(t.dtype == torch.float64 for t in tensors) else tl.float32


def tiles(n_rows: int, width: int, *, max_cols: int = 512, elems: int = 4096) -> tuple[int, int]:
    """(rows, cols) per program: cols a power of two covering `width` up to `max_cols`, and about
    `elems` elements per tile (one tile per program; the interpreter's cost is per program)."""
    cols = min(triton.next_power_of_2(max(width, 1)), max_cols)
    rows = max(1, min(elems // cols, triton.next_power_of_2(max(n_rows, 1))))
    return rows, cols


@triton.jit
def _splice_fwd_kernel(
    ids_ptr,  # [N] token ids
    src_ptr,  # [N] int64 source row: -1 table, [0, R) item rows, [R, R + K) out vectors
    table_ptr,  # [V, H]
    rows_ptr,  # [R, H]
    outs_ptr,  # [K, H]
    out_ptr,  # [N, H]
    n_pos,
    n_rows,
    H,
    ACC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    pos = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    pmask = pos < n_pos
    cmask = cols < H
    tok = tl.load(ids_ptr + pos, mask=pmask, other=0).to(tl.int64)
    src = tl.load(src_ptr + pos, mask=pmask, other=-1).to(tl.int64)
    m2 = pmask[:, None] & cmask[None, :]
    from_table = m2 & (src < 0)[:, None]
    from_rows = m2 & ((src >= 0) & (src < n_rows))[:, None]
    from_outs = m2 & (src >= n_rows)[:, None]
    c = cols[None, :]
    w = tl.load(table_ptr + tok[:, None] * H + c, mask=from_table, other=0.0).to(ACC)
    p = tl.load(rows_ptr + src[:, None] * H + c, mask=from_rows, other=0.0).to(ACC)
    o = tl.load(outs_ptr + (src - n_rows)[:, None] * H + c, mask=from_outs, other=0.0).to(ACC)
    e = tl.where(from_table, w, tl.where(from_rows, p, o))
    tl.store(out_ptr + pos.to(tl.int64)[:, None] * H + c, e.to(out_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _segment_sum_kernel(
    grad_ptr,  # [S, H] source rows
    order_ptr,  # [P] int64: source row indices, grouped by destination row
    offsets_ptr,  # [n_dst + 1] int64: destination r sums order[offsets[r]:offsets[r + 1]]
    dst_a_ptr,  # [n_a, H]: destination rows [0, n_a)
    dst_b_ptr,  # [n_dst - n_a, H]: destination rows [n_a, n_dst)
    n_dst,
    n_a,
    H,
    scale,
    ACC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cmask = cols < H
    r0 = tl.program_id(0).to(tl.int64) * BLOCK_R
    for i in range(BLOCK_R):
        r = r0 + i
        valid = r < n_dst
        start = tl.load(offsets_ptr + r, mask=valid, other=0)
        end = tl.load(offsets_ptr + r + 1, mask=valid, other=0)
        acc = tl.zeros((BLOCK_H,), dtype=ACC)
        for p0 in range(start, end, BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            pm = p < end
            src = tl.load(order_ptr + p, mask=pm, other=0).to(tl.int64)
            g = tl.load(grad_ptr + src[:, None] * H + cols[None, :], mask=pm[:, None] & cmask[None, :])
            acc += tl.sum(g.to(ACC), axis=0)
        acc = acc * scale
        in_a = valid & (r < n_a)
        in_b = valid & (r >= n_a)
        tl.store(dst_a_ptr + r * H + cols, acc.to(dst_a_ptr.dtype.element_ty), mask=cmask & in_a)
        tl.store(dst_b_ptr + (r - n_a) * H + cols, acc.to(dst_b_ptr.dtype.element_ty), mask=cmask & in_b)


def segments(keys: Tensor, n_dst: int) -> tuple[Tensor, Tensor]:
    """Group source rows by destination: keys [S] int in [-1, n_dst), -1 = skip.

    Returns (order [P], offsets [n_dst + 1]): the source rows with key >= 0, stably sorted by key (so a
    segment keeps source order and the sum is deterministic), and the CSR start of each key's segment.
    """
    keep = (keys >= 0).nonzero().squeeze(1)
    k = keys[keep]
    k_sorted, perm = torch.sort(k, stable=True)
    offsets = torch.searchsorted(k_sorted, torch.arange(n_dst + 1, device=keys.device, dtype=k.dtype))
    return keep[perm].contiguous(), offsets.to(torch.int64).contiguous()


def segment_sum(
    grad: Tensor,  # [S, H]
    order: Tensor,  # [P]
    offsets: Tensor,  # [n_dst + 1]
    dst_a: Tensor,  # [n_a, H]
    dst_b: Tensor | None = None,  # [n_dst - n_a, H]
    scale: float = 1.0,
) -> None:
    """dst[r] = scale · Σ_{p in segment r} grad[order[p]], every destination row written (0 if empty).

    Destination rows [0, n_a) go to `dst_a`, the rest to `dst_b` (one launch for two outputs).
    """
    n_a = dst_a.shape[0]
    n_dst = offsets.numel() - 1
    h = grad.shape[1]
    if n_dst == 0 or h == 0:
        return
    dst_b = dst_a if dst_b is None else dst_b
    block_h = min(triton.next_power_of_2(h), 512)
    block_r = 16
    grid = (triton.cdiv(n_dst, block_r), triton.cdiv(h, block_h))
    _segment_sum_kernel[grid](
        grad, order, offsets, dst_a, dst_b, n_dst, n_a, h, scale,
        ACC=acc_dtype(grad, dst_a), BLOCK_R=block_r, BLOCK_P=16, BLOCK_H=block_h,
    )  # fmt: skip


class SpliceFunction(torch.autograd.Function):
    """Autograd wrapper: forward `_splice_fwd_kernel`, backward `segment_sum` into (P, O)."""

    @staticmethod
    def forward(
        ctx, input_ids: Tensor, src: Tensor, table: Tensor, item_rows: Tensor, out_vectors: Tensor
    ) -> Tensor:
        b, t = input_ids.shape
        h = table.shape[1]
        out = torch.empty(b, t, h, dtype=table.dtype, device=table.device)
        n = b * t
        if n and h:
            # Replacement rows are cast to the table's dtype here (R + K rows, small), not in the kernel,
            # so the forward is a bit-exact copy on every backend (the interpreter's fp32 -> bf16
            # conversion rounds differently from torch's round-to-nearest-even).
            rows_t, outs_t = item_rows.to(table.dtype), out_vectors.to(table.dtype)
            block_n, block_h = tiles(n, h)
            grid = (triton.cdiv(n, block_n), triton.cdiv(h, block_h))
            _splice_fwd_kernel[grid](
                input_ids.reshape(-1).contiguous(), src, table.contiguous(), rows_t.contiguous(),
                outs_t.contiguous(), out, n, item_rows.shape[0], h,
                ACC=acc_dtype(table, item_rows, out_vectors), BLOCK_N=block_n, BLOCK_H=block_h,
            )  # fmt: skip
        ctx.save_for_backward(src)
        ctx.shapes = (item_rows.shape, item_rows.dtype, out_vectors.shape, out_vectors.dtype)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        (src,) = ctx.saved_tensors
        rows_shape, rows_dtype, outs_shape, outs_dtype = ctx.shapes
        d_rows = torch.empty(rows_shape, dtype=rows_dtype, device=grad_out.device)
        d_outs = torch.empty(outs_shape, dtype=outs_dtype, device=grad_out.device)
        n_dst = rows_shape[0] + outs_shape[0]
        order, offsets = segments(src, n_dst)
        g = grad_out.reshape(-1, grad_out.shape[-1]).contiguous()
        segment_sum(g, order, offsets, d_rows, d_outs)
        return None, None, None, d_rows, d_outs


def seq_embed_triton(
    input_ids: Tensor,  # [B, T] int64
    table: Tensor,  # [V, H] frozen
    item_rows: Tensor,  # [R, H]
    slot_to_row: Tensor | None,  # [M]
    out_vectors: Tensor,  # [K, H]
    *,
    hist_id: int,
    out_ids: Sequence[int],
) -> Tensor:  # [B, T, H] in table.dtype
    """The Triton splice; same contract as `reference.seq_embed_reference` (the table is detached)."""
    if out_vectors.shape[0] != len(out_ids):
        raise ValueError(f"out_vectors has {out_vectors.shape[0]} rows for {len(out_ids)} out ids")
    src = splice_source(input_ids, item_rows.shape[0], slot_to_row, hist_id=hist_id, out_ids=out_ids)
    return SpliceFunction.apply(input_ids, src, table.detach(), item_rows, out_vectors)
