"""The Triton teacher lookup against the torch reference, forward and backward.

Tolerances: fp32 rtol = atol = 1e-5 (the kernel does E·s + P in one fp32 expression, the reference in
three roundings; the backward sums in another order). With bf16 tables both paths are compared with
the fp32 reference on the same bf16 values: bf16 is one rounding of an fp32 result (rel. 2^-8 = 3.9e-3),
so rtol = 1.6e-2 with atol = 1e-2 (values are O(1-10)).
"""

from __future__ import annotations

import math

import pytest
import torch

from dist_srec.kernels.seq_lookup import seq_lookup, seq_lookup_reference


def make_case(b: int, length: int, d: int, n_items: int, *, seed: int, device: str, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, n_items + 1, (b, length), generator=g)
    pad = torch.randint(0, length + 1, (b,), generator=g)  # left padding, 0..L per row
    ids[torch.arange(length)[None, :] < pad[:, None]] = 0
    item = torch.randn(n_items + 1, d, generator=g).to(dtype)
    pos = torch.randn(length, d, generator=g).to(dtype)
    return ids.to(device), item.to(device).requires_grad_(True), pos.to(device).requires_grad_(True)


SHAPES = [  # (B, L, D, N)
    (1, 1, 4, 1),  # batch of one, one position
    (1, 5, 3, 2),
    (3, 17, 8, 4),  # repeated items in and across rows
    (7, 9, 13, 11),  # odd, non-power-of-2
    (4, 50, 64, 300),  # SASRec width, most items unused (zero rows)
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("b", "length", "d", "n"), SHAPES)
def test_forward_and_backward_match_reference(triton_path, device, b, length, d, n, dtype) -> None:
    ids, item, pos = make_case(b, length, d, n, seed=b * 100 + length, device=device, dtype=dtype)
    scale = math.sqrt(d)
    got = seq_lookup(ids, item, pos, scale)
    assert got.dtype == dtype
    g = torch.Generator().manual_seed(d)
    upstream = (torch.randn(got.shape, generator=g) * 0.5 - 0.2).to(device, dtype)  # != 1
    d_got = torch.autograd.grad(got, [item, pos], upstream)
    ref = seq_lookup_reference(ids, item.float(), pos.float(), scale)
    d_ref = torch.autograd.grad(ref, [item, pos], upstream.float())
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1.6e-2, "atol": 1e-2}
    torch.testing.assert_close(got.float(), ref, **tol)
    assert (got[ids == 0] == 0).all()
    for a, w in zip(d_got, d_ref):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), w.float(), **tol)
    assert (d_got[0][0] == 0).all()  # the padding row never gets a gradient


def test_only_the_needed_gradient_is_computed(triton_path, device) -> None:
    ids, item, pos = make_case(3, 6, 5, 4, seed=0, device=device)
    out = seq_lookup(ids, item, pos.detach(), 2.0)
    (d_item,) = torch.autograd.grad(out.sum(), [item])
    want = torch.autograd.grad(seq_lookup_reference(ids, item, pos.detach(), 2.0).sum(), [item])[0]
    torch.testing.assert_close(d_item, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="pos_table"):
        seq_lookup(ids, item, pos[:-1], 2.0)


def test_gradcheck_fp64(triton_path, device) -> None:
    ids, _, _ = make_case(3, 5, 4, 3, seed=2, device=device)
    item = torch.randn(4, 4, dtype=torch.float64, device=device, requires_grad=True)
    pos = torch.randn(5, 4, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda e, p: seq_lookup(ids, e, p, 2.0), (item, pos))


@pytest.mark.gpu
def test_catalog_scale_on_gpu(triton_path) -> None:
    """4096 histories of 200 over a 100k-item table, compiled kernel against torch."""
    ids, item, pos = make_case(4096, 200, 64, 100_000, seed=0, device="cuda")
    got = seq_lookup(ids, item, pos, 8.0)
    ref = seq_lookup_reference(ids, item, pos, 8.0)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    upstream = torch.randn_like(got)
    for a, w in zip(
        torch.autograd.grad(got, [item, pos], upstream), torch.autograd.grad(ref, [item, pos], upstream)
    ):
        torch.testing.assert_close(a, w, rtol=1e-4, atol=1e-3)
