"""Chunked ranking: identical results at any chunk size, exclusion, top-K merge."""

from __future__ import annotations

import pytest
import torch

from dist_srec.eval.ranking import Exclusion, chunked_target_rank, chunked_topk, iter_item_chunks


def _data(b: int = 6, n: int = 37, d: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    users = torch.randn(b, d, generator=g)
    items = torch.randn(n + 1, d, generator=g)
    items[0] = 0
    targets = torch.randint(1, n + 1, (b,), generator=g)
    history = torch.randint(0, n + 1, (b, 9), generator=g)
    return users, items, targets, history


def _brute_rank(users, items, targets, history=None):
    s = users @ items.T  # [B, N+1]
    s[:, 0] = float("-inf")
    ranks = []
    for b in range(len(users)):
        row = s[b].clone()
        if history is not None:
            for i in history[b].tolist():
                if i:
                    row[i] = float("-inf")
        t = int(targets[b])
        tgt = s[b, t]
        row[t] = float("-inf")
        ranks.append(int((row >= tgt).sum()))
    return ranks


@pytest.mark.parametrize("chunk", [1, 5, 16, 37, 1000])
def test_target_rank_is_chunk_invariant(chunk: int) -> None:
    users, items, targets, history = _data()
    assert chunked_target_rank(users, items, targets, chunk_size=chunk).tolist() == _brute_rank(
        users, items, targets
    )
    excl = Exclusion.from_history(history)
    got = chunked_target_rank(users, items, targets, exclude=excl, chunk_size=chunk)
    assert got.tolist() == _brute_rank(users, items, targets, history)


def test_target_rank_with_chunk_iterator_needs_target_scores() -> None:
    users, items, targets, _ = _data()
    with pytest.raises(ValueError, match="target_scores"):
        chunked_target_rank(users, iter_item_chunks(items, 7), targets)
    ts = (users * items[targets]).sum(-1)
    got = chunked_target_rank(users, iter_item_chunks(items, 7), targets, target_scores=ts)
    assert got.tolist() == _brute_rank(users, items, targets)


def test_excluded_target_is_still_ranked() -> None:
    users, items, targets, _ = _data()
    excl = Exclusion.from_history(targets[:, None])
    got = chunked_target_rank(users, items, targets, exclude=excl, chunk_size=4)
    assert got.tolist() == _brute_rank(users, items, targets)


def test_tied_item_counts_above_target() -> None:
    users = torch.tensor([[1.0, 0.0]])
    items = torch.tensor([[0.0, 0.0], [2.0, 0.0], [2.0, 5.0], [1.0, 0.0]])  # ids 1 and 2 tie
    assert chunked_target_rank(users, items, torch.tensor([1]), chunk_size=2).tolist() == [1]


@pytest.mark.parametrize("chunk", [1, 3, 10, 64])
def test_topk_matches_full_topk(chunk: int) -> None:
    users, items, _, history = _data()
    full = users @ items[1:].T
    s, i = chunked_topk(users, items, 5, chunk_size=chunk)
    fs, fi = torch.topk(full, 5)
    torch.testing.assert_close(s, fs)
    assert torch.equal(i, fi + 1)
    # with exclusion
    for b in range(len(users)):
        for it in history[b].tolist():
            if it:
                full[b, it - 1] = float("-inf")
    s, i = chunked_topk(users, items, 5, exclude=Exclusion.from_history(history), chunk_size=chunk)
    fs, fi = torch.topk(full, 5)
    torch.testing.assert_close(s, fs)
    assert torch.equal(i, fi + 1)


def test_topk_fills_with_minus_one_when_catalog_is_small() -> None:
    users = torch.ones(1, 2)
    items = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    s, i = chunked_topk(users, items, 4, exclude=Exclusion.from_history(torch.tensor([[1]])), chunk_size=1)
    assert i.tolist() == [[2, -1, -1, -1]]
    assert s[0, 0] == 2.0 and torch.isneginf(s[0, 1:]).all()


def test_exclusion_from_csr() -> None:
    e = Exclusion.from_csr(torch.tensor([0, 2, 2, 3]), torch.tensor([5, 1, 4]))
    assert sorted(zip(e.rows.tolist(), e.ids.tolist())) == [(0, 1), (0, 5), (2, 4)]
