"""Sampled and full protocols: negatives, reproducibility, user subsets, end to end on a toy scorer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dist_srec.errors import ConfigError, DataError
from dist_srec.eval.metrics import finalize
from dist_srec.eval.protocols import (
    EvalProtocol,
    evaluate_full,
    evaluate_sampled,
    result_record,
    sample_negatives,
    select_users,
    write_results,
)

N_ITEMS, N_USERS = 300, 12


def _user_items(seed: int = 0, heavy_user: int = 3):
    """CSR of random per-user items; user `heavy_user` saw 80% of the catalog (complement path)."""
    rng = np.random.default_rng(seed)
    rows = [np.empty(0, dtype=np.int64)]
    for u in range(1, N_USERS + 1):
        size = int(0.8 * N_ITEMS) if u == heavy_user else int(rng.integers(5, 40))
        rows.append(rng.choice(np.arange(1, N_ITEMS + 1), size, replace=False))
    indptr = np.zeros(N_USERS + 2, dtype=np.int64)
    indptr[2:] = np.cumsum([len(r) for r in rows[1:]])  # row 0 (no user 0) is empty
    return indptr, np.concatenate(rows)


def _batches(user_items, batch_size: int = 5):
    """One sample per user: target = its last item, history = the rest (left-padded to width 50)."""
    indptr, indices = user_items
    samples = []
    for u in range(1, N_USERS + 1):
        row = indices[indptr[u] : indptr[u + 1]]
        samples.append((u, row[:-1][-50:], row[-1]))
    out = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i : i + batch_size]
        hist = torch.zeros(len(chunk), 50, dtype=torch.int64)
        for j, (_, h, _) in enumerate(chunk):
            if len(h):
                hist[j, 50 - len(h) :] = torch.from_numpy(h)
        out.append(
            {
                "user": torch.tensor([c[0] for c in chunk]),
                "history": hist,
                "target": torch.tensor([int(c[2]) for c in chunk]),
                "mask": torch.ones(len(chunk), dtype=torch.bool),
            }
        )
    out[-1]["mask"][-1] = False  # a padding sample: never evaluated
    return out


def test_negatives_never_seen_distinct_and_reproducible() -> None:
    ui = _user_items()
    users = np.arange(1, N_USERS + 1)
    targets = np.array([ui[1][ui[0][u + 1] - 1] for u in users])
    negs = sample_negatives(users, targets, ui, N_ITEMS, 40, seed=7)
    assert negs.shape == (N_USERS, 40)
    for row, u in enumerate(users):
        seen = set(ui[1][ui[0][u] : ui[0][u + 1]].tolist())
        assert not (set(negs[row].tolist()) & seen)
        assert targets[row] not in negs[row]
        assert len(set(negs[row].tolist())) == 40
        assert negs[row].min() >= 1 and negs[row].max() <= N_ITEMS
    # reproducible, and independent of batching/order: each user's draw depends on (seed, user) only
    again = sample_negatives(users[::-1].copy(), targets[::-1].copy(), ui, N_ITEMS, 40, seed=7)
    assert np.array_equal(again[::-1], negs)
    assert not np.array_equal(sample_negatives(users, targets, ui, N_ITEMS, 40, seed=8), negs)


def test_negatives_are_uniform_over_unseen_items() -> None:
    ui = _user_items()
    u = np.array([1] * 1)
    seen = set(ui[1][ui[0][1] : ui[0][2]].tolist())
    counts = np.zeros(N_ITEMS + 1)
    for seed in range(400):
        counts[sample_negatives(u, np.array([0]), ui, N_ITEMS, 20, seed)[0]] += 1
    free = [i for i in range(1, N_ITEMS + 1) if i not in seen]
    expected = 400 * 20 / len(free)
    assert counts[free].min() > expected * 0.4 and counts[free].max() < expected * 1.8


def test_too_few_unseen_items_is_a_clear_error() -> None:
    ui = _user_items()
    with pytest.raises(DataError, match="unseen items"):
        sample_negatives(np.array([3]), np.array([1]), ui, N_ITEMS, 99, seed=0)


def test_select_users() -> None:
    keep = select_users(100, 10, seed=1)
    assert keep.sum() == 10 and not keep[0]
    assert np.array_equal(keep, select_users(100, 10, seed=1))
    assert select_users(100, 0, seed=1)[1:].all() and select_users(100, 500, seed=1)[1:].all()


def test_sampled_oracle_and_antioracle() -> None:
    ui = _user_items()
    batches = _batches(ui)
    proto = EvalProtocol(protocol="sampled", num_negatives=20, seed=3)
    targets = {}

    def oracle(batch, cands):  # the target (column 0) scores highest
        targets.update(zip(batch["user"].tolist(), cands[:, 1:].tolist()))
        return (cands == batch["target"][:, None]).float()

    kw = {"user_items": ui, "num_items": N_ITEMS, "num_users": N_USERS, "protocol": proto}
    m = finalize(evaluate_sampled(oracle, batches, **kw))
    assert m["count"] == N_USERS - 1  # the padding sample is skipped
    assert m["ndcg@10"] == 1.0 and m["mrr"] == 1.0
    constant = finalize(evaluate_sampled(lambda b, c: torch.zeros(c.shape), batches, **kw))
    assert constant["hr@20"] == 0.0  # all tied: pessimistic rank 20 of 21
    sub = EvalProtocol(protocol="sampled", num_negatives=20, seed=3, num_users=4)
    m = finalize(evaluate_sampled(oracle, batches, **{**kw, "protocol": sub}))
    assert m["count"] <= 4


def test_full_protocol_matches_brute_force_and_exclusion() -> None:
    ui = _user_items()
    batches = _batches(ui)
    g = torch.Generator().manual_seed(0)
    user_table, items = torch.randn(N_USERS + 1, 8, generator=g), torch.randn(N_ITEMS + 1, 8, generator=g)

    def expected(exclude: bool, last: int = 0) -> list[int]:
        ranks = []
        for b in batches:
            for j in range(len(b["user"])):
                if not b["mask"][j]:
                    continue
                s = items[1:] @ user_table[b["user"][j]]
                t = int(b["target"][j])
                keep = torch.ones(N_ITEMS, dtype=torch.bool)
                keep[t - 1] = False
                if exclude:
                    h = b["history"][j]
                    h = h[h > 0][-last:] if last else h[h > 0]  # the last k real items
                    keep[h - 1] = False
                ranks.append(int((s[keep] >= s[t - 1]).sum()))
        return ranks

    cases = [(False, 0), (True, 0), (True, 5), (True, 50)]  # last 5: shorter than most histories
    assert expected(True, 5) != expected(True, 0)  # the window is a different protocol on this data
    for exclude, last in cases:
        for chunk in (7, 300):
            proto = EvalProtocol(
                protocol="full", exclude_history=exclude, exclude_last=last, chunk_size=chunk
            )
            m = finalize(
                evaluate_full(
                    lambda b: user_table[b["user"]], items, batches, num_users=N_USERS, protocol=proto
                )
            )
            r = np.array(expected(exclude, last))
            assert m["count"] == len(r)
            assert m["hr@10"] == pytest.approx(float((r < 10).mean()))
            assert m["mrr"] == pytest.approx(float((1 / (r + 1)).mean()))


def test_protocol_validation_and_result_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="'protocol'"):
        EvalProtocol(protocol="bogus")
    with pytest.raises(ConfigError, match="'num_negatives'"):
        EvalProtocol(protocol="sampled", num_negatives=0)
    with pytest.raises(ConfigError, match="'exclude_last'"):
        EvalProtocol(protocol="full", exclude_history=True, exclude_last=-1)
    with pytest.raises(ConfigError, match="'exclude_last'"):
        EvalProtocol(protocol="full", exclude_last=200)  # a window without exclusion is a typo
    proto = EvalProtocol(protocol="sampled", seed=5)
    rec = result_record(
        {"ndcg@10": 0.5, "count": 10.0}, proto, model="sasrec", checkpoint="ck", checkpoint_sha256="ab",
        manifest_sha256="cd", counts={"num_items": 3},
    )  # fmt: skip
    write_results(tmp_path / "r.json", [rec])
    back = json.loads((tmp_path / "r.json").read_text())[0]
    assert back["metrics"] == {"ndcg@10": 0.5}
    assert back["protocol"]["protocol"] == "sampled" and back["seed"] == 5
    assert back["counts"] == {"evaluated_users": 10, "num_items": 3}
    assert back["checkpoint"] == {"path": "ck", "sha256": "ab"} and back["data_manifest_sha256"] == "cd"
