"""Ranking a batch of users over a whole catalog, one item chunk at a time.

Memory is O(B * C) for B users and chunks of C items, whatever the catalog size N: each chunk's
[B, C] score matrix is reduced at once, either to a running count (rank of the target) or merged into a
running top-K. Scores default to the dot product s(u, i) = <user_vecs[u], item_vecs[i]>, which is how
both SASRec and LLM-SRec score; pass `score_fn` for anything else.

Items are addressed by id. A chunk is `(first_id, vecs [C, D])` holding ids first_id..first_id+C-1;
`iter_item_chunks` cuts an [N+1, D] table (row 0 = padding, skipped) into such chunks, and any other
iterator of chunks (e.g. streamed from disk, or encoded on the fly by an LLM) works the same way.

Exclusion (e.g. the user's history) is an `Exclusion`: CSR rows over the batch, ids to drop from row b.
Excluded items score -inf: they never count above the target and never enter the top-K.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from dist_srec.eval.metrics import count_above

ItemChunk = tuple[int, Tensor]
ScoreFn = Callable[[Tensor, Tensor], Tensor]
DEFAULT_CHUNK = 65536


def dot_scores(user_vecs: Tensor, item_vecs: Tensor) -> Tensor:
    """[B, D] x [C, D] -> [B, C] inner products (fp32)."""
    return user_vecs.float() @ item_vecs.float().T


def iter_item_chunks(
    item_vecs: Tensor, chunk_size: int = DEFAULT_CHUNK, first_id: int = 1
) -> Iterator[ItemChunk]:
    """Cut rows first_id.. of an item table [N+1, D] into `(first_id, [C, D])` chunks of <= chunk_size."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    for lo in range(first_id, item_vecs.shape[0], chunk_size):
        yield lo, item_vecs[lo : lo + chunk_size]


@dataclass(frozen=True)
class Exclusion:
    """Per batch row, item ids to exclude, as flat (row, id) pairs sorted by id for chunk slicing."""

    rows: Tensor  # [nnz] int64
    ids: Tensor  # [nnz] int64, ascending

    @staticmethod
    def from_pairs(rows: Tensor, ids: Tensor) -> Exclusion:
        order = torch.argsort(ids, stable=True)
        return Exclusion(rows=rows[order].to(torch.int64), ids=ids[order].to(torch.int64))

    @staticmethod
    def from_history(history: Tensor) -> Exclusion:
        """The non-padding ids of a [B, L] history (0 = padding)."""
        rows, cols = torch.nonzero(history, as_tuple=True)
        return Exclusion.from_pairs(rows, history[rows, cols])

    @staticmethod
    def from_csr(indptr: Tensor, indices: Tensor) -> Exclusion:
        """Row b excludes indices[indptr[b]:indptr[b+1]]."""
        counts = indptr[1:] - indptr[:-1]
        rows = torch.repeat_interleave(torch.arange(counts.numel()), counts)
        return Exclusion.from_pairs(rows, indices[int(indptr[0]) : int(indptr[-1])])

    def mask_chunk(self, scores: Tensor, lo: int) -> None:
        """Set scores[b, id - lo] = -inf in place for excluded ids in [lo, lo + C)."""
        hi = lo + scores.shape[1]
        a, b = torch.searchsorted(self.ids, torch.tensor([lo, hi], device=self.ids.device)).tolist()
        if b > a:
            scores[self.rows[a:b], self.ids[a:b] - lo] = float("-inf")


def _as_chunks(items: Tensor | Iterable[ItemChunk], chunk_size: int, first_id: int) -> Iterable[ItemChunk]:
    return iter_item_chunks(items, chunk_size, first_id) if isinstance(items, Tensor) else items


def chunked_target_rank(
    user_vecs: Tensor,  # [B, D]
    items: Tensor | Iterable[ItemChunk],  # [N+1, D] table, or chunks
    target_ids: Tensor,  # [B]
    *,
    target_scores: Tensor | None = None,  # [B]
    exclude: Exclusion | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    first_id: int = 1,
    score_fn: ScoreFn = dot_scores,
) -> Tensor:
    """Pessimistic 0-based rank of each target over the whole catalog: [B] int64.

        rank[b] = #{ i != target[b], i not excluded : s(b, i) >= s(b, target[b]) }

    `target_scores` is required when `items` is a chunk iterator (no random access to the target's
    vector); with a table it is computed as s(b, target[b]). The target is ranked even if excluded.
    """
    if target_scores is None:
        if not isinstance(items, Tensor):
            raise ValueError("target_scores is required when items is a chunk iterator")
        tv = items[target_ids]  # [B, D]
        if score_fn is dot_scores:
            target_scores = (user_vecs.float() * tv.float()).sum(-1)
        else:
            target_scores = torch.cat(
                [score_fn(user_vecs[b : b + 1], tv[b : b + 1])[0] for b in range(len(tv))]
            )
    ranks = torch.zeros(user_vecs.shape[0], dtype=torch.int64, device=user_vecs.device)
    rows = torch.arange(user_vecs.shape[0], device=user_vecs.device)
    for lo, vecs in _as_chunks(items, chunk_size, first_id):
        s = score_fn(user_vecs, vecs)  # [B, C]
        if exclude is not None:
            exclude.mask_chunk(s, lo)
        inside = (target_ids >= lo) & (target_ids < lo + s.shape[1])
        s[rows[inside], target_ids[inside] - lo] = float("-inf")  # the target is not its own negative
        ranks += count_above(s, target_scores)
    return ranks


def chunked_topk(
    user_vecs: Tensor,  # [B, D]
    items: Tensor | Iterable[ItemChunk],
    k: int,
    *,
    exclude: Exclusion | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    first_id: int = 1,
    score_fn: ScoreFn = dot_scores,
) -> tuple[Tensor, Tensor]:
    """Top-k items per user over the whole catalog, merged chunk by chunk.

    Returns:
        scores [B, k] descending and ids [B, k] int64. Rows with fewer than k admissible items are
        completed with score -inf and id -1.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    b = user_vecs.shape[0]
    best_s = torch.full((b, k), float("-inf"), device=user_vecs.device)
    best_i = torch.full((b, k), -1, dtype=torch.int64, device=user_vecs.device)
    for lo, vecs in _as_chunks(items, chunk_size, first_id):
        s = score_fn(user_vecs, vecs).float()
        if exclude is not None:
            exclude.mask_chunk(s, lo)
        cs, ci = torch.topk(s, min(k, s.shape[1]), dim=1)
        ci = torch.where(torch.isneginf(cs), -1, ci + lo)
        merged_s, pos = torch.topk(torch.cat([best_s, cs], 1), k, dim=1)
        best_i = torch.cat([best_i, ci], 1).gather(1, pos)
        best_s = merged_s
    return best_s, best_i
