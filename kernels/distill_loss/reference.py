"""Fused distillation loss, pure torch: the CPU production path and the Triton kernel's oracle.

Inputs: user vectors u [B, d] and projected teacher vectors c [B, d] (d = 128). Everything is
computed in fp32, whatever the input dtype.

Forward:
    û_b = u_b / max(‖u_b‖, ε),  ĉ_b = c_b / max(‖c_b‖, ε)                      (L2 normalisation)
    MSE = 1/(B·d) Σ_b ‖û_b − ĉ_b‖²                    (torch's MSELoss mean, as the authors' code)
    U(x̂) = 1/P Σ_{i<j} exp(−2‖x̂_i − x̂_j‖²),  P = B(B−1)/2           (uniformity, "log-free")

U is the Gaussian potential of Wang & Isola (2020) without their log, exactly what the authors'
code computes (`pdist(x).pow(2).mul(-2).exp().mean()`); the mean over i<j equals the mean over i≠j.
It is applied to both sides, û and ĉ. With B < 2 there are no pairs and U = 0.

Gradient, with e_ij = exp(−2‖x̂_i − x̂_j‖²):
    ∂MSE/∂û_b = 2(û_b − ĉ_b)/(B·d),          ∂MSE/∂ĉ_b = −∂MSE/∂û_b
    ∂U/∂x̂_i   = −(4/P) Σ_{j≠i} e_ij (x̂_i − x̂_j)
    through the normalisation: ∂L/∂x_b = (I − x̂_b x̂_bᵀ) ∂L/∂x̂_b / ‖x_b‖

This reference materialises the B×B pair matrix; the Triton kernel tiles it (O(B·d) memory).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class DistillTerms(NamedTuple):
    """The three scalar terms (fp32). A term that was switched off is a zero tensor."""

    mse: Tensor
    uniformity_user: Tensor
    uniformity_teacher: Tensor


def uniformity_reference(x_hat: Tensor) -> Tensor:
    """U(x̂) = mean over pairs i<j of exp(−2‖x̂_i − x̂_j‖²) for rows x̂ [B, d]; 0 when B < 2."""
    b = x_hat.shape[0]
    if b < 2:
        return x_hat.sum() * 0.0
    sq = (x_hat * x_hat).sum(-1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (x_hat @ x_hat.T)).clamp_min(0.0)  # [B, B]
    i, j = torch.triu_indices(b, b, offset=1, device=x_hat.device)
    return torch.exp(-2.0 * d2[i, j]).mean()


def distill_loss_reference(
    u: Tensor,  # [B, d]
    c: Tensor,  # [B, d]
    *,
    mse: bool = True,
    uniformity: bool = True,
    eps: float = 1e-12,
) -> DistillTerms:
    """(MSE(û, ĉ), U(û), U(ĉ)) as in the module docstring; `mse` / `uniformity` switch terms off."""
    u_hat = F.normalize(u.float(), dim=-1, eps=eps)
    c_hat = F.normalize(c.float(), dim=-1, eps=eps)
    zero = u_hat.new_zeros(())
    return DistillTerms(
        mse=F.mse_loss(u_hat, c_hat) if mse else zero,
        uniformity_user=uniformity_reference(u_hat) if uniformity else zero,
        uniformity_teacher=uniformity_reference(c_hat) if uniformity else zero,
    )
