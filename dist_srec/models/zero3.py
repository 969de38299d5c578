"""Helpers for weights that DeepSpeed ZeRO-3 may partition over ranks (without importing DeepSpeed
unless they are): a partitioned parameter holds only this rank's share (`ds_tensor`), and an empty
`.data` outside a gather; `ds_shape` / `ds_numel` give its full size."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from torch import Tensor


def is_partitioned(p: Tensor) -> bool:
    """True for a parameter partitioned by DeepSpeed ZeRO-3 (it holds only this rank's share)."""
    return hasattr(p, "ds_id")


@contextlib.contextmanager
def gathered(params: Iterable[Tensor], modifier_rank: int | None = None) -> Iterator[None]:
    """Inside the block, ZeRO-3 partitioned `params` hold their full tensors (all-gathered; every rank
    must enter it with the same params). A no-op for ordinary tensors, without importing DeepSpeed.
    With `modifier_rank`, that rank's in-place changes are kept and re-partitioned on exit."""
    part = [p for p in params if is_partitioned(p)]
    if not part:
        yield
        return
    import deepspeed  # deferred: DeepSpeed probes the accelerator on import and takes seconds

    with deepspeed.zero.GatheredParameters(part, modifier_rank=modifier_rank):
        yield


def is_available(p: Tensor) -> bool:
    """True unless `p` is ZeRO-3 partitioned and not gathered right now (its `.data` is empty then)."""
    return not is_partitioned(p) or p.ds_status.name != "NOT_AVAILABLE"


def rows(w: Tensor) -> int:
    """Rows of a (possibly partitioned) 2-d weight: its full first dimension."""
    return int(w.ds_shape[0]) if is_partitioned(w) else int(w.shape[0])
