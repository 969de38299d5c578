"""Fused distillation loss: L2-normalise both sides, MSE between them, uniformity of each side.

`distill_loss(...)` is the entry point `dist_srec.losses` calls. The math, shapes and gradient are in
`reference.py`, which is both the CPU production path and the oracle for the Triton kernel of issue 6.

Dispatch: `_use_triton(tensor)` says whether a Triton kernel could run (triton installed and the
tensor on CUDA, or `TRITON_INTERPRET=1`). No Triton implementation exists yet, so every call runs the
torch reference, on every device.
"""

from __future__ import annotations

from torch import Tensor

from .._dispatch import use_triton as _use_triton
from .reference import DistillTerms, distill_loss_reference, uniformity_reference

__all__ = ["DistillTerms", "_use_triton", "distill_loss", "distill_loss_reference", "uniformity_reference"]


def distill_loss(
    u: Tensor,  # [B, d]
    c: Tensor,  # [B, d]
    *,
    mse: bool = True,
    uniformity: bool = True,
) -> DistillTerms:
    """(MSE(û, ĉ), U(û), U(ĉ)) in fp32; see `distill_loss_reference`.

    Always the torch reference for now: a Triton path will be chosen here by `_use_triton` once
    `triton_impl.py` exists (issue 6).
    """
    return distill_loss_reference(u, c, mse=mse, uniformity=uniformity)
