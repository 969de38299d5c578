"""Catalog encoding sharded over ranks: each rank runs the item prompt for 1/W of the items, then the
pieces are all-gathered, so validation stops re-encoding the whole catalog on every rank.

    n = ceil(N / W);  rank r encodes items 1 + r*n .. (r+1)*n   (ids past N repeat item N)
    table = [0; all_gather(pieces)[:N]]                          [N+1, d] on every rank

Every rank encodes n ids in the same number of batches, so the number of `encode_items` calls is the
same everywhere (ZeRO-3's per-layer all-gathers need that; `FrozenLM.forwards_to_match` evens out the
length buckets inside each call). User scoring is already split: each rank scores its own loader's
users and the metric sums are all-reduced (`dist_srec.eval.protocols.all_reduce_sums`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm import tqdm

from dist_srec.train.context import TrainContext


@torch.no_grad()
def sharded_encode_catalog(
    encode_items: Callable[[Tensor], Tensor],
    num_items: int,
    ctx: TrainContext,
    batch_items: int = 256,
    progress: bool = True,
) -> Tensor:
    """[N+1, d] fp32 item table (row 0 zeros), identical on every rank; `encode_items(ids [n]) -> [n, d]`."""
    n = math.ceil(num_items / ctx.world_size)
    ids = torch.arange(1 + ctx.rank * n, 1 + (ctx.rank + 1) * n).clamp(max=num_items)
    bar = tqdm(range(0, n, batch_items), desc="encode catalog (sharded)", disable=not progress, leave=False)
    mine = torch.cat([encode_items(ids[lo : lo + batch_items]).float() for lo in bar])  # [n, d]
    comm = mine.to(ctx.device) if dist.get_backend() == "nccl" else mine.cpu()
    pieces = [torch.empty_like(comm) for _ in range(ctx.world_size)]
    dist.all_gather(pieces, comm.contiguous())
    table = torch.cat(pieces)[:num_items].cpu()
    return torch.cat([torch.zeros(1, table.shape[1]), table])
