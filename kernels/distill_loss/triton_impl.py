"""Fused distillation loss in Triton: normalise + MSE, tiled pairwise uniformity, one-pass backward.

Inputs u, c [B, d] (d = 128 in LLM-SRec), any float dtype; arithmetic in fp32 after every load (fp64
for fp64 inputs, which only gradcheck uses). With x̂_b = x_b / max(‖x_b‖, ε), P = B(B−1)/2 and
e_ij = exp(−2‖x̂_i − x̂_j‖²), where ‖x̂_i − x̂_j‖² = ‖x̂_i‖² + ‖x̂_j‖² − 2 x̂_i·x̂_j:

    MSE  = 1/(B·d) Σ_b ‖û_b − ĉ_b‖²
    U(x̂) = 1/(2P) Σ_{i≠j} e_ij = 1/(2P) Σ_i s_i,          s_i = Σ_{j≠i} e_ij         (0 when B < 2)

Gradient, with upstream scalars g_m, g_u, g_c for (MSE, U(û), U(ĉ)) and A_i = Σ_{j≠i} e_ij x̂_j:

    ∂U/∂x̂_i = −(4/P) Σ_{j≠i} e_ij (x̂_i − x̂_j) = −(4/P) (s_i x̂_i − A_i)
    ∂L/∂û_b = g_m·2(û_b − ĉ_b)/(B·d) − g_u·(4/P)(s_b û_b − A_b)          (ĉ: −MSE term, g_c, its s, A)
    ∂L/∂x_b = (∂L/∂x̂_b − x̂_b (x̂_b·∂L/∂x̂_b)) / ‖x_b‖    if ‖x_b‖ > ε,   else ∂L/∂x̂_b / ε

Kernels (Liger-style: the pair pass computes the gradient pieces while it has the tiles in hand):
1. `_normalise_kernel`, BLOCK_B rows per program: x̂ for both sides, the norms, per-row ‖û − ĉ‖².
2. `_pairs_kernel`, grid (row tiles, side): each program holds BLOCK_I rows and sweeps all column
   tiles of BLOCK_J rows, Gram tile by `tl.dot` (ieee fp32, not tf32: e is sensitive to d² errors),
   and accumulates s_i and, when a gradient is needed, A_i = e @ x̂_J. Memory O(B·d): the B×B pair
   matrix only ever exists as BLOCK_I×BLOCK_J tiles in registers. Each program owns its rows, so no
   atomics and a deterministic result; the symmetric half is recomputed rather than exchanged.
3. `_distill_bwd_kernel`, BLOCK_B rows per program: the elementwise formula above from the saved
   x̂, norms, s and A; the upstream scalars are read from device memory (no host sync).
Final scalar sums (Σ_b of per-row values) are torch reductions over [B]-vectors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..seq_embed.triton_impl import acc_dtype


@triton.jit
def _normalise_kernel(
    u_ptr, c_ptr,  # [B, d] each
    xhat_ptr,  # [2, B, d]: û then ĉ
    norm_ptr,  # [2, B]: ‖u_b‖, ‖c_b‖
    sqdiff_ptr,  # [B]: ‖û_b − ĉ_b‖²
    B, D, eps,
    ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_D)
    rmask = rows < B
    m2 = rmask[:, None] & (cols < D)[None, :]
    off = rows[:, None] * D + cols[None, :]
    u = tl.load(u_ptr + off, mask=m2, other=0.0).to(ACC)
    c = tl.load(c_ptr + off, mask=m2, other=0.0).to(ACC)
    nu = tl.sqrt(tl.sum(u * u, axis=1))
    nc = tl.sqrt(tl.sum(c * c, axis=1))
    uh = u / tl.maximum(nu, eps)[:, None]
    ch = c / tl.maximum(nc, eps)[:, None]
    diff = uh - ch
    tl.store(xhat_ptr + off, uh, mask=m2)
    tl.store(xhat_ptr + B * D + off, ch, mask=m2)
    tl.store(norm_ptr + rows, nu, mask=rmask)
    tl.store(norm_ptr + B + rows, nc, mask=rmask)
    tl.store(sqdiff_ptr + rows, tl.sum(diff * diff, axis=1), mask=rmask)


@triton.jit
def _pairs_kernel(
    xhat_ptr,  # [2, B, d]
    rowsum_ptr,  # [2, B]: s_i
    a_ptr,  # [2, B, d]: A_i (written when GRAD)
    B, D,
    ACC: tl.constexpr, GRAD: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    side = tl.program_id(1).to(tl.int64)
    base = xhat_ptr + side * B * D
    ri = tl.program_id(0).to(tl.int64) * BLOCK_I + tl.arange(0, BLOCK_I)
    cols = tl.arange(0, BLOCK_D)
    cmask = (cols < D)[None, :]
    imask = ri < B
    xi = tl.load(base + ri[:, None] * D + cols[None, :], mask=imask[:, None] & cmask, other=0.0).to(ACC)
    sqi = tl.sum(xi * xi, axis=1)
    s = tl.zeros((BLOCK_I,), dtype=ACC)
    a = tl.zeros((BLOCK_I, BLOCK_D), dtype=ACC)
    for j0 in range(0, B, BLOCK_J):
        rj = j0 + tl.arange(0, BLOCK_J)
        jmask = rj < B
        xj = tl.load(base + rj[:, None] * D + cols[None, :], mask=jmask[:, None] & cmask, other=0.0)
        xj = xj.to(ACC)
        sqj = tl.sum(xj * xj, axis=1)
        gram = tl.dot(xi, tl.trans(xj), input_precision="ieee").to(ACC)
        d2 = tl.maximum(sqi[:, None] + sqj[None, :] - 2.0 * gram, 0.0)
        pair = imask[:, None] & jmask[None, :] & (ri[:, None] != rj[None, :])
        e = tl.where(pair, tl.exp(-2.0 * d2), 0.0)
        s += tl.sum(e, axis=1)
        if GRAD:
            a += tl.dot(e, xj, input_precision="ieee").to(ACC)
    tl.store(rowsum_ptr + side * B + ri, s, mask=imask)
    if GRAD:
        tl.store(a_ptr + side * B * D + ri[:, None] * D + cols[None, :], a, mask=imask[:, None] & cmask)


@triton.jit
def _distill_bwd_kernel(
    xhat_ptr, norm_ptr, rowsum_ptr, a_ptr,  # saved by the forward: [2, B, d], [2, B], [2, B], [2, B, d]
    coef_ptr,  # [3]: g_m·2/(B·d), −g_u·4/P, −g_c·4/P
    du_ptr, dc_ptr,  # [B, d] each
    B, D, eps,
    ACC: tl.constexpr, UNI: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_D)
    rmask = rows < B
    m2 = rmask[:, None] & (cols < D)[None, :]
    off = rows[:, None] * D + cols[None, :]
    uh = tl.load(xhat_ptr + off, mask=m2, other=0.0).to(ACC)
    ch = tl.load(xhat_ptr + B * D + off, mask=m2, other=0.0).to(ACC)
    k_m = tl.load(coef_ptr).to(ACC)
    gu = k_m * (uh - ch)
    gc = -gu
    if UNI:
        k_u = tl.load(coef_ptr + 1).to(ACC)
        k_c = tl.load(coef_ptr + 2).to(ACC)
        su = tl.load(rowsum_ptr + rows, mask=rmask, other=0.0).to(ACC)
        sc = tl.load(rowsum_ptr + B + rows, mask=rmask, other=0.0).to(ACC)
        au = tl.load(a_ptr + off, mask=m2, other=0.0).to(ACC)
        ac = tl.load(a_ptr + B * D + off, mask=m2, other=0.0).to(ACC)
        gu += k_u * (su[:, None] * uh - au)
        gc += k_c * (sc[:, None] * ch - ac)
    nu = tl.load(norm_ptr + rows, mask=rmask, other=1.0).to(ACC)
    nc = tl.load(norm_ptr + B + rows, mask=rmask, other=1.0).to(ACC)
    # through x̂ = x / max(‖x‖, ε): project out x̂ and divide by the norm; below ε it is x / ε
    pu = (gu - uh * tl.sum(uh * gu, axis=1)[:, None]) / tl.maximum(nu, eps)[:, None]
    pc = (gc - ch * tl.sum(ch * gc, axis=1)[:, None]) / tl.maximum(nc, eps)[:, None]
    du = tl.where((nu > eps)[:, None], pu, gu / eps)
    dc = tl.where((nc > eps)[:, None], pc, gc / eps)
    tl.store(du_ptr + off, du.to(du_ptr.dtype.element_ty), mask=m2)
    tl.store(dc_ptr + off, dc.to(dc_ptr.dtype.element_ty), mask=m2)


def _row_blocks(b: int, d: int) -> tuple[int, int]:
    block_d = max(16, triton.next_power_of_2(d))
    return max(1, min(4096 // block_d, triton.next_power_of_2(max(b, 1)))), block_d


class DistillLossFunction(torch.autograd.Function):
    """(MSE, U(û), U(ĉ)) forward and their gradient w.r.t. (u, c); see the module docstring."""

    @staticmethod
    def forward(ctx, u: Tensor, c: Tensor, mse: bool, uniformity: bool, eps: float):  # type: ignore[override]
        if u.shape != c.shape or u.dim() != 2:
            raise ValueError(f"u and c must both be [B, d], got {tuple(u.shape)} and {tuple(c.shape)}")
        b, d = u.shape
        acc = acc_dtype(u, c)
        tdt = torch.float64 if acc == tl.float64 else torch.float32
        dev = u.device
        u, c = u.contiguous(), c.contiguous()
        xhat = torch.empty(2, b, d, dtype=tdt, device=dev)
        norms = torch.empty(2, b, dtype=tdt, device=dev)
        sqdiff = torch.empty(b, dtype=tdt, device=dev)
        block_b, block_d = _row_blocks(b, d)
        if b:
            _normalise_kernel[(triton.cdiv(b, block_b),)](
                u, c, xhat, norms, sqdiff, b, d, eps, ACC=acc, BLOCK_B=block_b, BLOCK_D=block_d
            )
        zero = torch.zeros((), dtype=tdt, device=dev)
        uni = uniformity and b >= 2
        grad = any(ctx.needs_input_grad[:2])
        rowsum = torch.zeros(2, b, dtype=tdt, device=dev)
        a = torch.empty(2, b, d, dtype=tdt, device=dev) if (uni and grad) else rowsum
        if uni:
            block_i = 32
            _pairs_kernel[(triton.cdiv(b, block_i), 2)](
                xhat, rowsum, a, b, d,
                ACC=acc, GRAD=grad, BLOCK_I=block_i, BLOCK_J=32, BLOCK_D=block_d,
            )  # fmt: skip
        n_pairs = b * (b - 1) / 2
        uu, uc = (rowsum.sum(1) / (2 * n_pairs)).unbind(0) if uni else (zero, zero.clone())
        m = sqdiff.sum() / (b * d) if mse else zero.clone()
        ctx.save_for_backward(xhat, norms, rowsum, a)
        ctx.meta = (mse, uni, eps, b, d, n_pairs, u.dtype, c.dtype)
        return m, uu, uc

    @staticmethod
    def backward(ctx, g_m: Tensor, g_u: Tensor, g_c: Tensor):  # type: ignore[override]
        xhat, norms, rowsum, a = ctx.saved_tensors
        mse, uni, eps, b, d, n_pairs, u_dtype, c_dtype = ctx.meta
        k_m = g_m * (2.0 / (b * d)) if mse else torch.zeros_like(g_m)
        k_uni = -4.0 / n_pairs if uni else 0.0
        coef = torch.stack([k_m, g_u * k_uni, g_c * k_uni]).to(xhat.dtype).contiguous()
        du = torch.empty(b, d, dtype=u_dtype, device=xhat.device)
        dc = torch.empty(b, d, dtype=c_dtype, device=xhat.device)
        block_b, block_d = _row_blocks(b, d)
        if b:
            _distill_bwd_kernel[(triton.cdiv(b, block_b),)](
                xhat, norms, rowsum, a, coef, du, dc, b, d, eps,
                ACC=acc_dtype(xhat), UNI=uni, BLOCK_B=block_b, BLOCK_D=block_d,
            )  # fmt: skip
        return du, dc, None, None, None


def distill_loss_triton(
    u: Tensor,  # [B, d]
    c: Tensor,  # [B, d]
    *,
    mse: bool = True,
    uniformity: bool = True,
    eps: float = 1e-12,
) -> tuple[Tensor, Tensor, Tensor]:
    """(MSE(û, ĉ), U(û), U(ĉ)) as fp32 scalars (fp64 for fp64 inputs); see the module docstring."""
    return DistillLossFunction.apply(u, c, mse, uniformity, eps)
