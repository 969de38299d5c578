"""LLM-SRec and its teacher evaluated side by side: same split, same users, same candidates.

Both models reduce to vectors scored by dot product: user vectors [U+1, d] (row u = user u) and an
item table [N+1, d] (row 0 = padding). User vectors are computed once per evaluation and reused by
both protocols (`dist_srec.eval.protocols`); the sampled protocol's negatives depend only on
(seed, user), so the two models rank the same 1 + 99 candidates.

History-shuffle diagnostic (the paper's Tables 5 and 12): each user's most recent `window` history
items (with their timestamps) are permuted by a seeded RNG (seed, user); the LLM's window is the
items its prompt shows, the teacher's its `max_len`. The report gives the metrics on shuffled
histories and the mean cosine similarity between each user's original and shuffled vectors: a model
that ignores order scores ~1.0.

LLM-SRec's item table is the whole catalog encoded once through the item prompt, cached on disk
under a key made of the checkpoint, LM and teacher hashes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
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
from dist_srec.io import atomic_path

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


def cached_item_table(cache_file: Path, build: Callable[[], Tensor]) -> Tensor:
    """Load `cache_file` (safetensors) if present, else `build()` it and write it atomically."""
    if cache_file.is_file():
        return load_file(cache_file)["items"]
    table = build()
    with atomic_path(cache_file) as tmp:
        save_file({"items": table.contiguous()}, tmp)
    return table


def shuffle_history(batch: Batch, window: int, seed: int) -> dict[str, Tensor]:
    """A copy of `batch` whose last `window` real history items (and their timestamps) are permuted per
    user by `np.random.default_rng([seed, user])`; padding stays in place."""
    hist, ts = batch["history"].clone(), batch["history_ts"].clone()
    for row, u in enumerate(batch["user"].tolist()):
        real = np.flatnonzero(hist[row].numpy() != 0)[-window:]
        perm = real[np.random.default_rng([seed, u]).permutation(len(real))]
        hist[row, real], ts[row, real] = hist[row, perm], ts[row, perm]
    return {**batch, "history": hist, "history_ts": ts}


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


def mean_cosine(a: Tensor, b: Tensor, selected: np.ndarray) -> float:
    """Mean over selected rows of cos(a_u, b_u)."""
    rows = torch.from_numpy(np.flatnonzero(selected))
    return float(F.cosine_similarity(a[rows], b[rows], dim=-1).mean())


def compare_models(
    models: Mapping[str, tuple[UserVecFn, Tensor, int]],
    make_batches: Callable[[], Iterable[Batch]],
    protocols: list[EvalProtocol],
    *,
    user_items: UserItems,
    num_users: int,
    selected: np.ndarray,
    shuffle: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate every model {name: (user_vec_fn, item_table, shuffle_window)} under every protocol.

    Returns {name: {"<protocol>": metrics, "shuffled/<protocol>": metrics, "shuffle_cosine": c}}.
    """
    report: dict[str, Any] = {}
    for name, (vec_fn, items, window) in models.items():
        users = user_table(
            vec_fn, make_batches(), num_users, selected, desc=f"{name} users", progress=progress
        )
        out: dict[str, Any] = {}
        for p in protocols:
            out[p.protocol] = evaluate_tables(
                users, items, make_batches(), p, user_items=user_items, num_users=num_users
            )
        if shuffle:
            seed = protocols[0].seed
            shuf = user_table(
                vec_fn, make_batches(), num_users, selected, desc=f"{name} users (shuffled)", progress=progress,
                transform=lambda b, w=window, s=seed: shuffle_history(b, w, s),
            )  # fmt: skip
            for p in protocols:
                out[f"shuffled/{p.protocol}"] = evaluate_tables(
                    shuf, items, make_batches(), p, user_items=user_items, num_users=num_users
                )
            out["shuffle_cosine"] = mean_cosine(users, shuf, selected)
        report[name] = out
    return report
