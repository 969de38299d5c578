"""Metrics against hand-computed ranks, ties included."""

from __future__ import annotations

import math

import pytest
import torch

from dist_srec.eval.metrics import (
    add_sums,
    count_above,
    empty_sums,
    finalize,
    metric_sums,
    metrics_from_ranks,
    rank_of_target,
)


def test_rank_of_target_by_hand_with_pessimistic_ties() -> None:
    scores = torch.tensor(
        [
            [5.0, 1.0, 2.0, 3.0],  # target best -> 0
            [1.0, 2.0, 0.5, 3.0],  # two above -> 2
            [2.0, 2.0, 1.0, 0.0],  # one tie -> counts above -> 1
            [1.0, 1.0, 1.0, 1.0],  # all tied -> last, 3
            [float("nan"), 0.0, -1.0, -2.0],  # NaN target ranks last
        ]
    )
    assert rank_of_target(scores).tolist() == [0, 2, 1, 3, 3]
    # target in another column
    assert rank_of_target(torch.tensor([[0.0, 3.0, 1.0]]), torch.tensor([2])).tolist() == [1]


def test_count_above() -> None:
    assert count_above(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([2.0])).tolist() == [2]


def test_metrics_by_hand() -> None:
    ranks = torch.tensor([0, 2, 9, 10, 19, 25])
    m = metrics_from_ranks(ranks)
    n = 6
    assert m["count"] == n
    assert m["hr@10"] == pytest.approx(3 / n)
    assert m["hr@20"] == pytest.approx(5 / n)
    ndcg10 = (1 / math.log2(2) + 1 / math.log2(4) + 1 / math.log2(11)) / n
    assert m["ndcg@10"] == pytest.approx(ndcg10)
    ndcg20 = ndcg10 + (1 / math.log2(12) + 1 / math.log2(21)) / n
    assert m["ndcg@20"] == pytest.approx(ndcg20)
    assert m["mrr"] == pytest.approx(sum(1 / (r + 1) for r in ranks.tolist()) / n)


def test_sums_are_additive_and_empty_is_neutral() -> None:
    a, b = torch.tensor([0, 5, 30]), torch.tensor([1, 12])
    merged = finalize(add_sums(add_sums(empty_sums(), metric_sums(a)), metric_sums(b)))
    whole = metrics_from_ranks(torch.cat([a, b]))
    assert merged.keys() == whole.keys()
    for k in whole:
        assert merged[k] == pytest.approx(whole[k])
    assert math.isnan(finalize(empty_sums())["ndcg@10"])


def test_custom_cutoffs() -> None:
    m = metrics_from_ranks(torch.tensor([0, 4]), ks=(1, 5))
    assert m["hr@1"] == 0.5 and m["hr@5"] == 1.0
