"""The vectorised splice against a naive per-sample loop, forward and backward; and its dispatcher."""

from __future__ import annotations

import pytest
import torch

from dist_srec.kernels import seq_embed as seq_embed_mod
from dist_srec.kernels._dispatch import triton_available
from dist_srec.kernels.seq_embed import seq_embed, seq_embed_reference

HIST, USER_OUT, ITEM_OUT = 20, 21, 22
V = 23


def naive_splice(ids, table, item_rows, slot_to_row, out_vectors, out_ids):
    """Per-sample, per-position loop: the obviously-correct version."""
    rows, m = [], 0
    for b in range(ids.shape[0]):
        row = []
        for t in range(ids.shape[1]):
            x = int(ids[b, t])
            if x == HIST:
                r = m if slot_to_row is None else int(slot_to_row[m])
                row.append(item_rows[r].to(table.dtype))
                m += 1
            elif x in out_ids:
                row.append(out_vectors[out_ids.index(x)].to(table.dtype))
            else:
                row.append(table[x].detach())
        rows.append(torch.stack(row))
    return torch.stack(rows)


def make_case(b: int, t: int, h: int, n_rows: int, seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 20, (b, t), generator=g)
    ids[torch.rand(b, t, generator=g) < 0.3] = HIST
    ids[:, -1] = torch.where(torch.arange(b) % 2 == 0, USER_OUT, ITEM_OUT)
    m = int((ids == HIST).sum())
    table = torch.randn(V, h, generator=g).to(dtype).requires_grad_(True)
    item_rows = torch.randn(n_rows, h, generator=g, requires_grad=True)
    slot_to_row = torch.randint(0, n_rows, (m,), generator=g)  # repeated rows
    out_vectors = torch.randn(2, h, generator=g, requires_grad=True)
    return ids, table, item_rows, slot_to_row, out_vectors


@pytest.mark.parametrize(
    ("b", "t", "h", "n_rows"), [(1, 1, 4, 1), (3, 17, 8, 2), (5, 33, 13, 7), (2, 9, 64, 30)]
)
def test_forward_and_backward_match_naive_loop(b: int, t: int, h: int, n_rows: int) -> None:
    ids, table, item_rows, slot_to_row, out_vectors = make_case(b, t, h, n_rows, seed=b * 100 + t)
    out_ids = [USER_OUT, ITEM_OUT]
    got = seq_embed_reference(ids, table, item_rows, slot_to_row, out_vectors, hist_id=HIST, out_ids=out_ids)
    want = naive_splice(ids, table, item_rows, slot_to_row, out_vectors, out_ids)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    upstream = torch.randn_like(got)
    g_got = torch.autograd.grad((got * upstream).sum(), [item_rows, out_vectors], allow_unused=True)
    g_want = torch.autograd.grad((want * upstream).sum(), [item_rows, out_vectors], allow_unused=True)
    for a, w in zip(g_got, g_want):
        if w is None:
            assert a is None or a.abs().sum() == 0
        else:
            torch.testing.assert_close(a, w, rtol=1e-6, atol=1e-6)


def test_table_never_gets_a_gradient_and_repeated_rows_accumulate() -> None:
    ids = torch.tensor([[1, HIST, HIST, USER_OUT], [HIST, 2, USER_OUT, 0]])
    table = torch.randn(V, 4, requires_grad=True)
    item_rows = torch.randn(2, 4, requires_grad=True)
    out_vectors = torch.randn(2, 4, requires_grad=True)
    emb = seq_embed_reference(
        ids,
        table,
        item_rows,
        torch.tensor([1, 1, 0]),
        out_vectors,
        hist_id=HIST,
        out_ids=(USER_OUT, ITEM_OUT),
    )
    emb.sum().backward()
    assert table.grad is None
    torch.testing.assert_close(item_rows.grad, torch.tensor([[1.0] * 4, [2.0] * 4]))
    torch.testing.assert_close(out_vectors.grad, torch.tensor([[2.0] * 4, [0.0] * 4]))


def test_identity_slot_map_and_bf16_table_keep_fp32_grads() -> None:
    ids, table, _, _, out_vectors = make_case(3, 11, 8, 4, seed=7, dtype=torch.bfloat16)
    m = int((ids == HIST).sum())
    item_rows = torch.randn(m, 8, requires_grad=True)
    emb = seq_embed_reference(
        ids, table, item_rows, None, out_vectors, hist_id=HIST, out_ids=(USER_OUT, ITEM_OUT)
    )
    assert emb.dtype == torch.bfloat16
    emb.float().sum().backward()
    assert item_rows.grad.dtype == torch.float32
    torch.testing.assert_close(emb[ids == HIST], item_rows.detach().to(torch.bfloat16))


def test_slot_count_mismatch_raises() -> None:
    ids, table, item_rows, slot_to_row, out_vectors = make_case(2, 9, 4, 3, seed=1)
    with pytest.raises(ValueError, match="slots"):
        seq_embed_reference(
            ids, table, item_rows, slot_to_row[:-1], out_vectors, hist_id=HIST, out_ids=(21, 22)
        )


def test_gradcheck_fp64() -> None:
    ids = torch.tensor([[HIST, 3, USER_OUT], [HIST, HIST, ITEM_OUT]])
    table = torch.randn(V, 3, dtype=torch.float64)
    item_rows = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    out_vectors = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    slot_to_row = torch.tensor([0, 1, 0])

    def f(rows, outs):
        return seq_embed_reference(
            ids, table, rows, slot_to_row, outs, hist_id=HIST, out_ids=(USER_OUT, ITEM_OUT)
        )

    assert torch.autograd.gradcheck(f, (item_rows, out_vectors))


def test_dispatcher_runs_the_reference_and_says_when_triton_could_run(monkeypatch) -> None:
    ids, table, item_rows, slot_to_row, out_vectors = make_case(2, 9, 4, 3, seed=2)
    args = (ids, table, item_rows, slot_to_row, out_vectors)
    kw = {"hist_id": HIST, "out_ids": (USER_OUT, ITEM_OUT)}
    assert torch.equal(seq_embed(*args, **kw), seq_embed_reference(*args, **kw))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not seq_embed_mod._use_triton(ids)  # CPU tensor, no interpreter
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert seq_embed_mod._use_triton(ids) == triton_available()
