"""What autograd keeps for a backward: a measure for the memory levers' tests."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


def saved_bytes(
    fn: Callable[[], torch.Tensor], weights: Iterable[torch.Tensor] = ()
) -> tuple[torch.Tensor, int]:
    """`fn()` and the bytes of the tensors autograd packs for its backward while `fn` builds its graph,
    less those sharing storage with `weights` (frozen parameters a GEMM keeps cost no extra memory)."""
    skip = {w.untyped_storage().data_ptr() for w in weights}
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if t.untyped_storage().data_ptr() not in skip:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total
