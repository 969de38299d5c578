"""The Triton distillation loss against the torch reference: terms and gradients w.r.t. u and c.

Tolerances: both paths compute in fp32 from the same input values (bf16 inputs are upcast at load),
so the terms agree to fp32 rounding: rtol = 1e-5, atol = 1e-6. Gradients in fp32: rtol = 1e-4,
atol = 1e-6 (sums over pairs in another order). Gradients w.r.t. bf16 inputs are returned in bf16,
one rounding each: rtol = 1.6e-2 (two bf16 ulps), atol = 1e-5.
"""

from __future__ import annotations

import pytest
import torch

from dist_srec.kernels.distill_loss import distill_loss, distill_loss_reference

WEIGHTS = (0.7, -1.3, 2.1)  # upstream gradients of (MSE, U(û), U(ĉ)), none equal to 1


def make_case(b: int, d: int, *, seed: int, device: str, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    u = (torch.randn(b, d, generator=g) * 3.0).to(device, dtype).requires_grad_(True)
    c = torch.randn(b, d, generator=g).to(device, dtype).requires_grad_(True)
    return u, c


def weighted(terms) -> torch.Tensor:
    return sum(w * t for w, t in zip(WEIGHTS, terms))


SHAPES = [(1, 5), (2, 3), (5, 13), (33, 128), (40, 20), (20, 128)]  # batch of one; odd; paper B=20


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("b", "d"), SHAPES)
def test_terms_and_gradients_match_reference(triton_path, device, b, d, dtype) -> None:
    u, c = make_case(b, d, seed=b * 10 + d, device=device, dtype=dtype)
    got = distill_loss(u, c)
    want = distill_loss_reference(u, c)
    for a, w in zip(got, want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, w, rtol=1e-5, atol=1e-6)
    d_got = torch.autograd.grad(weighted(got), [u, c])
    d_want = torch.autograd.grad(weighted(want), [u, c])
    tol = {"rtol": 1e-4, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1.6e-2, "atol": 1e-5}
    for a, w in zip(d_got, d_want):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), w.float(), **tol)


@pytest.mark.parametrize(("mse", "uniformity"), [(True, False), (False, True)])
def test_switches_and_the_user_only_call(triton_path, device, mse, uniformity) -> None:
    u, c = make_case(6, 8, seed=1, device=device)
    got = distill_loss(u, c, mse=mse, uniformity=uniformity)
    want = distill_loss_reference(u, c, mse=mse, uniformity=uniformity)
    for a, w in zip(got, want):
        torch.testing.assert_close(a, w, rtol=1e-5, atol=1e-6)
    d_got = torch.autograd.grad(weighted(got), [u, c], allow_unused=True)
    d_want = torch.autograd.grad(weighted(want), [u, c], allow_unused=True)
    for a, w in zip(d_got, d_want):
        torch.testing.assert_close(a, torch.zeros_like(a) if w is None else w, rtol=1e-4, atol=1e-6)
    # dist_srec.models.losses without distillation: uniformity of the user side only, u passed twice
    got_u = distill_loss(u, u, mse=False).uniformity_user
    want_u = distill_loss_reference(u, u, mse=False).uniformity_user
    torch.testing.assert_close(got_u, want_u, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        torch.autograd.grad(got_u, u)[0], torch.autograd.grad(want_u, u)[0], rtol=1e-4, atol=1e-6
    )


def test_zero_row_takes_the_eps_branch(triton_path, device) -> None:
    u, c = make_case(4, 6, seed=3, device=device)
    u = u.detach().clone()
    u[2] = 0.0
    u.requires_grad_(True)
    got = torch.autograd.grad(weighted(distill_loss(u, c)), [u, c])
    want = torch.autograd.grad(weighted(distill_loss_reference(u, c)), [u, c])
    for a, w in zip(got, want):
        torch.testing.assert_close(a, w, rtol=1e-4, atol=1e-6)


def test_gradcheck_fp64(triton_path, device) -> None:
    """fp64 inputs stay fp64 in the kernels, so the analytic backward can be checked numerically."""
    u = torch.randn(7, 5, dtype=torch.float64, device=device, requires_grad=True)
    c = torch.randn(7, 5, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: torch.stack(list(distill_loss(a, b))), (u, c))


@pytest.mark.gpu
def test_large_batch_memory_is_linear_on_gpu(triton_path) -> None:
    """B = 16384: the reference would hold B² floats (1 GiB) per side; the kernels O(B·d)."""
    u, c = make_case(16384, 128, seed=0, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    terms = distill_loss(u, c)
    torch.autograd.grad(weighted(terms), [u, c])
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base < 128 * 2**20  # ~7 B·d fp32 buffers = 56 MiB
    small_u, small_c = u[:2048].detach().requires_grad_(True), c[:2048].detach().requires_grad_(True)
    for a, w in zip(distill_loss(small_u, small_c), distill_loss_reference(small_u, small_c)):
        torch.testing.assert_close(a, w, rtol=1e-4, atol=1e-6)
