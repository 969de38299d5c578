"""Fused distillation loss: L2-normalise both sides, MSE between them, uniformity of each side.

`distill_loss(...)` is the entry point `dist_srec.models.losses` calls. The math, shapes and gradient are in
`reference.py` (pure torch, materialises the B×B pair matrix: the CPU production path and the oracle)
and in `triton_impl.py` (three kernels, pairs tiled so memory stays O(B·d), gradient pieces
accumulated in the forward's pair pass).

Dispatch (`.._dispatch.use_triton`, on u's device): the Triton kernels when triton imports and u is
on CUDA or `TRITON_INTERPRET=1`; the reference otherwise. `DIST_SREC_KERNELS=torch|triton|auto` or
`force_kernel_path(...)` forces either path. `triton_impl` is imported only when chosen, so this
package imports without triton. Both paths return fp32 scalars (the Triton path keeps fp64 for fp64
inputs, which gradcheck uses).
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
    """(MSE(û, ĉ), U(û), U(ĉ)) in fp32; see `distill_loss_reference`."""
    if _use_triton(u, "distill_loss"):
        from .triton_impl import (
            distill_loss_triton,  # deferred: triton is optional and must load after TRITON_INTERPRET is set
        )

        return DistillTerms(*distill_loss_triton(u, c, mse=mse, uniformity=uniformity))
    return distill_loss_reference(u, c, mse=mse, uniformity=uniformity)
