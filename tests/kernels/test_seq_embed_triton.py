"""The Triton splice against the torch reference: forward exactly, backward to fp32 rounding.

Runs in triton's CPU interpreter here (see conftest.py) and on CUDA where there is one. Tolerances:
forward is a copy, so it must match bit for bit in fp32 and bf16 (the replacement rows are cast to
the table dtype by torch in both paths). Backward sums the same fp32 values in another order: rtol =
atol = 1e-5 against the reference in fp32; with a bf16 table, against the reference fed the same
upstream gradient upcast to fp32 (the kernel accumulates in fp32; the reference would sum in bf16).
"""

from __future__ import annotations

import pytest
import torch

from dist_srec.kernels.seq_embed import seq_embed, seq_embed_reference

HIST, USER_OUT, ITEM_OUT = 20, 21, 22
V = 23
OUT_IDS = (USER_OUT, ITEM_OUT)


def make_case(b: int, t: int, h: int, n_rows: int, *, seed: int, device: str, dtype=torch.float32):
    """Random prompts with [HistoryEmb] slots (about 30%), one out token per row, repeated rows."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 20, (b, t), generator=g)
    if n_rows:
        ids[torch.rand(b, t, generator=g) < 0.3] = HIST
    ids[:, -1] = torch.where(torch.arange(b) % 2 == 0, USER_OUT, ITEM_OUT)
    m = int((ids == HIST).sum())
    table = torch.randn(V, h, generator=g).to(dtype)
    item_rows = torch.randn(n_rows, h, generator=g)
    slot_to_row = torch.randint(0, max(n_rows, 1), (m,), generator=g)  # rows repeat when m > R
    out_vectors = torch.randn(2, h, generator=g)
    to = {"device": device}
    return (
        ids.to(**to),
        table.to(**to).requires_grad_(True),
        item_rows.to(**to).requires_grad_(True),
        slot_to_row.to(**to),
        out_vectors.to(**to).requires_grad_(True),
    )


def run(ids, table, item_rows, slot_to_row, out_vectors):
    return seq_embed(ids, table, item_rows, slot_to_row, out_vectors, hist_id=HIST, out_ids=OUT_IDS)


SHAPES = [  # (B, T, H, R)
    (1, 1, 4, 1),  # batch of one, one token (the out token)
    (1, 7, 5, 3),
    (3, 17, 8, 2),  # few rows, many slots: heavy repetition
    (5, 33, 13, 7),  # odd, non-power-of-2
    (2, 9, 64, 30),  # more rows than slots: some rows unused (zero gradient)
    (2, 5, 600, 3),  # H over one column tile (512)
    (3, 6, 8, 0),  # no [HistoryEmb] slot at all
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("b", "t", "h", "r"), SHAPES)
def test_forward_and_backward_match_reference(triton_path, device, b, t, h, r, dtype) -> None:
    ids, table, rows, s2r, outs = make_case(
        b, t, h, r, seed=b * 1000 + t * 10 + h, device=device, dtype=dtype
    )
    got = run(ids, table, rows, s2r, outs)
    want = seq_embed_reference(ids, table, rows, s2r, outs, hist_id=HIST, out_ids=OUT_IDS)
    assert got.dtype == want.dtype == dtype
    torch.testing.assert_close(got, want, rtol=0, atol=0)

    g = torch.Generator().manual_seed(b + t)
    upstream = (torch.randn(got.shape, generator=g) * 3.0).to(device)  # upstream gradient != 1
    d_got = torch.autograd.grad(got, [rows, outs], upstream.to(dtype))
    ref32 = seq_embed_reference(ids, table.float(), rows, s2r, outs, hist_id=HIST, out_ids=OUT_IDS)
    d_want = torch.autograd.grad(ref32, [rows, outs], upstream.to(dtype).float())
    for a, w in zip(d_got, d_want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, w, rtol=1e-5, atol=1e-5)


def test_repeated_rows_accumulate_and_the_table_gets_nothing(triton_path, device) -> None:
    ids = torch.tensor([[1, HIST, HIST, USER_OUT], [HIST, 2, USER_OUT, 0]], device=device)
    table = torch.randn(V, 4, device=device, requires_grad=True)
    rows = torch.randn(2, 4, device=device, requires_grad=True)
    outs = torch.randn(2, 4, device=device, requires_grad=True)
    emb = run(ids, table, rows, torch.tensor([1, 1, 0], device=device), outs)
    (emb * 2.0).sum().backward()
    assert table.grad is None
    torch.testing.assert_close(rows.grad.cpu(), torch.tensor([[2.0] * 4, [4.0] * 4]))
    torch.testing.assert_close(outs.grad.cpu(), torch.tensor([[4.0] * 4, [0.0] * 4]))


def test_identity_slot_map_and_determinism(triton_path, device) -> None:
    ids, table, _, _, outs = make_case(4, 21, 24, 5, seed=3, device=device)
    m = int((ids == HIST).sum())
    rows = torch.randn(m, 24, device=device, requires_grad=True)
    got = run(ids, table, rows, None, outs)
    want = seq_embed_reference(ids, table, rows, None, outs, hist_id=HIST, out_ids=OUT_IDS)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    upstream = torch.randn_like(got)
    first = torch.autograd.grad(got, [rows, outs], upstream, retain_graph=True)
    again = torch.autograd.grad(got, [rows, outs], upstream)
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # fixed summation order


def test_bad_inputs_raise_like_the_reference(triton_path, device) -> None:
    ids, table, rows, s2r, outs = make_case(2, 9, 4, 3, seed=1, device=device)
    with pytest.raises(ValueError, match="slots"):
        run(ids, table, rows, s2r[:-1], outs)
    with pytest.raises(ValueError, match="out ids"):
        run(ids, table, rows, s2r, outs[:1])


def test_gradcheck_fp64(triton_path, device) -> None:
    """The kernels keep fp64 for fp64 inputs, so the analytic backward is checked numerically."""
    ids = torch.tensor([[HIST, 3, USER_OUT], [HIST, HIST, ITEM_OUT]], device=device)
    table = torch.randn(V, 3, dtype=torch.float64, device=device)
    rows = torch.randn(2, 3, dtype=torch.float64, device=device, requires_grad=True)
    outs = torch.randn(2, 3, dtype=torch.float64, device=device, requires_grad=True)
    s2r = torch.tensor([0, 1, 0], device=device)
    assert torch.autograd.gradcheck(lambda r, o: run(ids, table, r, s2r, o), (rows, outs))


@pytest.mark.gpu
def test_paper_scale_bf16_on_gpu(triton_path) -> None:
    """20 user prompts of 1024 tokens at H = 3072, bf16 table, compiled kernels against torch."""
    ids, table, rows, s2r, outs = make_case(20, 1024, 3072, 600, seed=0, device="cuda", dtype=torch.bfloat16)
    got = run(ids, table, rows, s2r, outs)
    want = seq_embed_reference(ids, table, rows, s2r, outs, hist_id=HIST, out_ids=OUT_IDS)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    upstream = torch.randn_like(got)
    d_got = torch.autograd.grad(got, [rows, outs], upstream)
    ref32 = seq_embed_reference(ids, table.float(), rows, s2r, outs, hist_id=HIST, out_ids=OUT_IDS)
    d_want = torch.autograd.grad(ref32, [rows, outs], upstream.float())
    for a, w in zip(d_got, d_want):
        torch.testing.assert_close(a, w, rtol=1e-4, atol=1e-4)
