"""User and item vector tables, and their metrics under one protocol.

Every model evaluated here reduces to vectors scored by dot product: user vectors [U+1, d] (row u =
user u) and an item table [N+1, d] (row 0 = padding). `encode_catalog` builds the item table in
batches (`sharded_encode_catalog` splits it over ranks), `user_table` the user vectors of a split,
and `evaluate_tables` scores them under a protocol (`dist_srec.eval.protocols`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from tqdm import tqdm

from dist_srec.eval.metrics import finalize
from dist_srec.eval.protocols import (
    EvalProtocol,
    UserItems,
    all_reduce_sums,
    evaluate_full,
    evaluate_sampled,
    select_rows,
)
from dist_srec.models.llmsrec import LLMSRec
from dist_srec.parallel.context import TrainContext

Batch = Mapping[str, Tensor]


UserVecFn = Callable[[Batch], Tensor]


@torch.no_grad()
def encode_catalog(
    encode_items: Callable[[Tensor], Tensor], num_items: int, batch_items: int = 256, progress: bool = True
) -> Tensor:
    """[N+1, d] fp32 item table from `encode_items(ids [n]) -> [n, d]`, row 0 zeros; batched, no graph."""
    bar = tqdm(total=num_items, desc="encode catalog", disable=not progress, leave=False)
    table = encode_id_range(encode_items, 1, num_items + 1, batch_items, bar.update)
    bar.close()
    return torch.cat([torch.zeros(1, table.shape[1]), table])


@torch.no_grad()
def encode_id_range(
    encode_items: Callable[[Tensor], Tensor],
    lo: int,
    hi: int,
    batch_items: int,
    on_batch: Callable[[int], Any] | None = None,
) -> Tensor:
    """[hi - lo, d] fp32 vectors of item ids lo..hi-1, `batch_items` ids per `encode_items` call;
    `on_batch(n)` after each call (progress)."""
    parts = []
    for start in range(lo, hi, batch_items):
        ids = torch.arange(start, min(start + batch_items, hi))
        parts.append(encode_items(ids).float().cpu())
        if on_batch is not None:
            on_batch(len(ids))
    return torch.cat(parts)


@torch.no_grad()
def user_table(
    vec_fn: UserVecFn,
    batches: Iterable[Batch],
    num_users: int,
    selected: np.ndarray,
    *,
    transform: Callable[[Batch], Batch] | None = None,
    desc: str = "encode users",
    progress: bool = True,
    lockstep: bool = False,
) -> Tensor:
    """[U+1, d] user vectors for the selected users of `batches` (other rows zero).

    A batch without selected users is skipped, unless `lockstep`: then `vec_fn` still runs on its first
    row and the result is dropped, so every rank calls `vec_fn` once per batch. Ranks read equally many
    batches, and under ZeRO-3 each call runs LM forwards, whose all-gathers are collectives: a rank
    skipping one would pair its next collective with another rank's all-gather (a gloo abort seen with
    SmolLM2 at 50 sparse validation users).
    """
    table: Tensor | None = None
    for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
        keep = batch["mask"].bool() & torch.from_numpy(selected[batch["user"].numpy()])
        idle = not keep.any()
        if idle:
            if not lockstep:
                continue
            keep[0] = True  # a real or repeated (pad) sample: valid input, output dropped
        sub = select_rows(batch, keep)
        if transform is not None:
            sub = transform(sub)
        vecs = vec_fn(sub).float().cpu()
        if table is None:  # under lockstep a rank may hold no selected user: its rows stay zero
            table = torch.zeros(num_users + 1, vecs.shape[1])
        if not idle:
            table[sub["user"]] = vecs
    if table is None:
        raise ValueError("no users were evaluated (empty split or selection)")
    return table


def evaluate_tables(
    users: Tensor,
    items: Tensor,
    batches: Iterable[Batch],
    protocol: EvalProtocol,
    *,
    user_items: UserItems,
    num_users: int,
) -> dict[str, float]:
    """Metrics of precomputed user [U+1, d] and item [N+1, d] tables under one protocol (summed over
    ranks when distributed)."""
    if protocol.protocol == "sampled":
        sums = evaluate_sampled(
            lambda b, cands: torch.einsum("bd,bnd->bn", users[b["user"]], items[cands]),
            batches,
            user_items=user_items,
            num_items=items.shape[0] - 1,
            num_users=num_users,
            protocol=protocol,
        )
    else:
        sums = evaluate_full(
            lambda b: users[b["user"]], items, batches, num_users=num_users, protocol=protocol
        )
    return finalize(all_reduce_sums(sums))


@torch.no_grad()
def sharded_encode_catalog(
    encode_items: Callable[[Tensor], Tensor],
    num_items: int,
    ctx: TrainContext,
    batch_items: int = 256,
    progress: bool = True,
) -> Tensor:
    """[N+1, d] fp32 item table (row 0 zeros), identical on every rank; `encode_items(ids [n]) -> [n, d]`.

    Catalog encoding sharded over ranks: each rank runs the item prompt for 1/W of the items, then the
    pieces are all-gathered, so validation stops re-encoding the whole catalog on every rank.

        n = ceil(N / W);  rank r encodes items 1 + r*n .. (r+1)*n   (ids past N repeat item N)
        table = [0; all_gather(pieces)[:N]]                          [N+1, d] on every rank

    Every rank encodes n ids in the same number of batches, so the number of `encode_items` calls is the
    same everywhere (ZeRO-3's per-layer all-gathers need that; `FrozenLM.forwards_to_match` evens out the
    length buckets inside each call). User scoring is already split: each rank scores its own loader's
    users and the metric sums are all-reduced (`dist_srec.eval.protocols.all_reduce_sums`).
    """
    n = math.ceil(num_items / ctx.world_size)
    ids = torch.arange(1 + ctx.rank * n, 1 + (ctx.rank + 1) * n).clamp(max=num_items)
    bar = tqdm(range(0, n, batch_items), desc="encode catalog (sharded)", disable=not progress, leave=False)
    mine = torch.cat([encode_items(ids[lo : lo + batch_items]).float() for lo in bar])  # [n, d]
    comm = mine.to(ctx.device) if dist.get_backend() == "nccl" else mine.cpu()
    pieces = [torch.empty_like(comm) for _ in range(ctx.world_size)]
    dist.all_gather(pieces, comm.contiguous())
    table = torch.cat(pieces)[:num_items].cpu()
    return torch.cat([torch.zeros(1, table.shape[1]), table])


def item_table(
    model: LLMSRec,
    num_items: int,
    batch_items: int = 256,
    progress: bool = True,
    ctx: TrainContext | None = None,
) -> Tensor:
    """The whole catalog through the item prompt, [N+1, d] (row 0 zeros); with several ranks in
    `ctx`, each encodes a 1/W share and the table is all-gathered (every rank must call this)."""
    was = model.training
    model.eval()
    if ctx is not None and ctx.world_size > 1:
        table = sharded_encode_catalog(model.encode_items, num_items, ctx, batch_items, progress)
    else:
        table = encode_catalog(model.encode_items, num_items, batch_items, progress)
    model.train(was)
    return table
