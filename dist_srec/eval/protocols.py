"""Evaluation protocols shared by the SASRec teacher and LLM-SRec, and the result file they write.

Both protocols rank each evaluated user's single target item (leave-last-out: the valid or test item)
and report HR@K, NDCG@K and MRR from that rank (`dist_srec.eval.metrics`, ties pessimistic).

sampled (the SASRec / LLM-SRec papers' protocol):
    candidates = the target + `num_negatives` (default 99) items drawn uniformly without replacement from
    the items the user NEVER interacted with in any split. The draw for user u is seeded by (seed, u)
    alone, so it is reproducible and independent of batching, order and the number of ranks.
    Optionally only a seeded random subset of `num_users` users is evaluated (the papers used 10,000).

full:
    the target is ranked against every item 1..N of the catalog, in item chunks (memory O(B * chunk)),
    optionally with the user's history (the items in the batch's `history`) excluded. Evaluate with a
    loader `max_len` at least the longest history for exact exclusion; models use their own window.

The module is model-agnostic: `evaluate_sampled` takes a function scoring candidate ids for a batch,
`evaluate_full` a function giving [B, D] user vectors plus an [N+1, D] item table, scored by dot product.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from dist_srec.errors import ConfigError, DataError
from dist_srec.eval.metrics import DEFAULT_KS, add_sums, empty_sums, finalize, metric_sums, rank_of_target
from dist_srec.eval.ranking import DEFAULT_CHUNK, Exclusion, chunked_target_rank
from dist_srec.io import write_json_atomic

Batch = Mapping[str, Tensor]
UserItems = tuple[np.ndarray, np.ndarray]  # CSR: indptr [U+2], indices; row u = every item of user u
SampledScoreFn = Callable[[Batch, Tensor], Tensor]  # (batch, candidate ids [B, 1+n]) -> scores [B, 1+n]
UserVecFn = Callable[[Batch], Tensor]  # batch -> user vectors [B, D]


@dataclass(kw_only=True)
class EvalProtocol:
    """How a split is evaluated; recorded verbatim in every result file."""

    protocol: Literal["sampled", "full"]
    split: str = "test"
    seed: int = 42
    num_negatives: int = 99
    """sampled: negatives per user."""
    num_users: int = 0
    """Evaluate a seeded random subset of this many users (0 = all users)."""
    exclude_history: bool = False
    """full: drop the user's history items from the ranking."""
    exclude_last: int = 0
    """full, with exclude_history: drop only the last k history items (0 = the whole history). HSTU's
    published ML-1M numbers drop the last 200 (its `past_ids`), so k = 200 reproduces that protocol."""
    chunk_size: int = DEFAULT_CHUNK
    """full: items scored at a time."""
    ks: tuple[int, ...] = DEFAULT_KS

    @classmethod
    def validation(
        cls, seed: int, num_users: int, num_negatives: int, protocol: Literal["sampled", "full"] = "sampled"
    ) -> EvalProtocol:
        """The protocol of training's validation rounds, on the valid split (sampled unless told)."""
        return cls(
            protocol=protocol, split="valid", seed=seed, num_users=num_users, num_negatives=num_negatives
        )

    def __post_init__(self) -> None:
        if self.protocol not in ("sampled", "full"):
            raise ConfigError(f"config field 'protocol': must be 'sampled' or 'full', got {self.protocol!r}")
        if self.exclude_last < 0:
            raise ConfigError(f"config field 'exclude_last': must be >= 0, got {self.exclude_last}")
        if self.exclude_last and not self.exclude_history:
            raise ConfigError("config field 'exclude_last': set only with exclude_history")
        for name in ("num_negatives", "chunk_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config field '{name}': must be >= 1, got {getattr(self, name)}")
        if self.num_users < 0:
            raise ConfigError(f"config field 'num_users': must be >= 0, got {self.num_users}")
        if not self.ks or min(self.ks) < 1:
            raise ConfigError(f"config field 'ks': must be non-empty positive cut-offs, got {self.ks}")
        self.ks = tuple(int(k) for k in self.ks)


def check_negatives(user_items: UserItems, num_items: int, n: int, field: str = "eval_negatives") -> None:
    """`ConfigError` before any work if some user has fewer than `n` unseen items to sample from (the
    sampled protocol draws `n` items each user never interacted with)."""
    if num_items - 1 < n:
        raise ConfigError(f"config field '{field}': {n} sampled negatives per user, but the catalog has only "
                          f"{num_items} items")  # fmt: skip
    indptr, indices = user_items
    lengths = np.diff(indptr)  # >= distinct items per user: only rows that might fail are deduplicated
    for u in np.flatnonzero(num_items - lengths < n).tolist():
        if u == 0:
            continue  # row 0 is padding
        seen = len(np.unique(indices[indptr[u] : indptr[u + 1]]))
        if num_items - seen < n:
            raise ConfigError(
                f"config field '{field}': {n} sampled negatives per user, but user {u} has interacted with "
                f"{seen} of the {num_items} items, leaving {num_items - seen} to sample"
            )


def sample_negatives(
    users: np.ndarray, targets: np.ndarray, user_items: UserItems, num_items: int, n: int, seed: int
) -> np.ndarray:
    """Per user, `n` distinct items never interacted with (and != target), uniformly: [B, n] int64.

    User u's draw uses `np.random.default_rng([seed, u])` only. Sequential rejection of seen and repeated
    draws gives a uniform subset without replacement; users who saw most of the catalog sample from the
    explicit complement instead.
    """
    indptr, indices = user_items
    out = np.empty((len(users), n), dtype=np.int64)
    for row, (u, t) in enumerate(zip(users.tolist(), targets.tolist())):
        if not 0 < u < len(indptr) - 1:
            raise DataError(f"user id {u} is outside the catalog's 1..{len(indptr) - 2}", field="user")
        seen = np.unique(np.append(indices[indptr[u] : indptr[u + 1]], t))
        free = num_items - int(np.count_nonzero((seen >= 1) & (seen <= num_items)))
        if free < n:
            raise DataError(f"user {u} has only {free} unseen items, fewer than {n} negatives", field="user")
        rng = np.random.default_rng([seed, u])
        if 2 * len(seen) > num_items:
            pool = np.setdiff1d(np.arange(1, num_items + 1), seen, assume_unique=True)
            out[row] = rng.choice(pool, size=n, replace=False)
            continue
        got = np.empty(0, dtype=np.int64)
        while len(got) < n:
            draw = rng.integers(1, num_items + 1, size=2 * (n - len(got)) + 8)
            draw = np.concatenate([got, draw[~np.isin(draw, seen)]])
            _, first = np.unique(draw, return_index=True)
            got = draw[np.sort(first)]
        out[row] = got[:n]
    return out


def select_users(num_users: int, n: int, seed: int) -> np.ndarray:
    """Bool mask [U+1] over user ids 1..U of a seeded random subset of size n (all if n == 0 or n >= U)."""
    keep = np.zeros(num_users + 1, dtype=bool)
    if n == 0 or n >= num_users:
        keep[1:] = True
    else:
        keep[np.random.default_rng([seed, 0x5EED]).choice(np.arange(1, num_users + 1), n, replace=False)] = (
            True
        )
    return keep


def _rows(batch: Batch, selected: np.ndarray | None) -> Tensor:
    """[B] bool: real samples (mask) of selected users."""
    keep = batch["mask"].bool().cpu()
    if selected is not None:
        keep &= torch.from_numpy(selected[batch["user"].cpu().numpy()])
    return keep


def select_rows(batch: Batch, keep: Tensor) -> dict[str, Tensor]:
    """The rows `keep` [B] bool of every per-sample tensor of a batch."""
    return {k: v[keep] for k, v in batch.items() if isinstance(v, Tensor) and v.shape[:1] == keep.shape}


def _progress(batches: Iterable[Batch], desc: str, show: bool) -> Iterable[Batch]:
    total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
    return tqdm(batches, desc=desc, total=total, disable=not show, leave=False, dynamic_ncols=True)


@torch.no_grad()
def evaluate_sampled(
    score_fn: SampledScoreFn,
    batches: Iterable[Batch],
    *,
    user_items: UserItems,
    num_items: int,
    num_users: int,
    protocol: EvalProtocol,
    progress: bool = False,
) -> dict[str, float]:
    """Sampled protocol (module docstring): metric sums over this process's batches (`finalize` them).

    Sums, not means, so ranks can `all_reduce_sums` before `finalize`.
    """
    selected = select_users(num_users, protocol.num_users, protocol.seed)
    sums = empty_sums(protocol.ks)
    for batch in _progress(batches, f"eval sampled/{protocol.split}", progress):
        keep = _rows(batch, selected)
        if not keep.any():
            continue
        users, targets = batch["user"][keep], batch["target"][keep]
        negs = sample_negatives(
            users.numpy(), targets.numpy(), user_items, num_items, protocol.num_negatives, protocol.seed
        )
        cands = torch.cat([targets[:, None], torch.from_numpy(negs)], 1)  # [b, 1+n], target at 0
        sub = select_rows(batch, keep)
        scores = score_fn(sub, cands)
        sums = add_sums(sums, metric_sums(rank_of_target(scores.cpu(), 0), protocol.ks))
    return sums


@torch.no_grad()
def evaluate_full(
    user_vec_fn: UserVecFn,
    item_vecs: Tensor,
    batches: Iterable[Batch],
    *,
    num_users: int,
    protocol: EvalProtocol,
    progress: bool = False,
) -> dict[str, float]:
    """Full protocol (module docstring) against an [N+1, D] item table (row 0 = padding, never ranked)."""
    selected = select_users(num_users, protocol.num_users, protocol.seed)
    sums = empty_sums(protocol.ks)
    for batch in _progress(batches, f"eval full/{protocol.split}", progress):
        keep = _rows(batch, selected)
        if not keep.any():
            continue
        sub = select_rows(batch, keep)
        user_vecs = user_vec_fn(sub).to(item_vecs.device)
        history = sub["history"][:, -protocol.exclude_last :] if protocol.exclude_last else sub["history"]
        exclude = Exclusion.from_history(history.to(item_vecs.device)) if protocol.exclude_history else None
        ranks = chunked_target_rank(
            user_vecs,
            item_vecs,
            sub["target"].to(item_vecs.device),
            exclude=exclude,
            chunk_size=protocol.chunk_size,
        )
        sums = add_sums(sums, metric_sums(ranks.cpu(), protocol.ks))
    return sums


def all_reduce_sums(sums: dict[str, float]) -> dict[str, float]:
    """Sum metric sums over ranks when torch.distributed is initialised (every rank must call it)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return sums
    keys = sorted(sums)  # same keys on every rank (`empty_sums`), same order
    t = torch.tensor([sums[k] for k in keys], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def result_record(
    metrics: dict[str, float],
    protocol: EvalProtocol,
    *,
    model: str,
    checkpoint: str | None,
    checkpoint_sha256: str | None,
    manifest_sha256: str | None,
    counts: dict[str, int] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One evaluation's JSON record: metrics, protocol (incl. seed), counts, checkpoint and data hashes."""
    return {
        "model": model,
        "metrics": {k: v for k, v in metrics.items() if k != "count"},
        "protocol": asdict(protocol),
        "seed": protocol.seed,
        "counts": {"evaluated_users": int(metrics.get("count", 0)), **(counts or {})},
        "checkpoint": {"path": checkpoint, "sha256": checkpoint_sha256},
        "data_manifest_sha256": manifest_sha256,
        "created_unix": int(time.time()),
        **(extra or {}),
    }


def write_results(path: str | os.PathLike, records: list[dict[str, Any]] | dict[str, Any]) -> None:
    """Write result record(s) as JSON, atomically."""
    write_json_atomic(path, records)


__all__ = [
    "EvalProtocol",
    "all_reduce_sums",
    "evaluate_full",
    "evaluate_sampled",
    "finalize",
    "result_record",
    "sample_negatives",
    "select_users",
    "write_results",
]
