"""Losses against hand-computed values, the ablation switches, and the distillation dispatcher."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dist_srec.errors import ConfigError
from dist_srec.kernels.distill_loss import distill_loss, distill_loss_reference, uniformity_reference
from dist_srec.models.losses import LossConfig, llmsrec_loss, retrieval_ce


def test_retrieval_ce_by_hand() -> None:
    user = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    cand = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], [[0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]])
    # logits: row 0 = [1, 0, -1]; row 1 = [2, 2, 0]
    want = (
        -math.log(math.e / (math.e + 1 + math.exp(-1))) - math.log(math.exp(2) / (2 * math.exp(2) + 1))
    ) / 2
    assert retrieval_ce(user, cand).item() == pytest.approx(want, rel=1e-6)


def test_in_batch_negatives_mask_false_negatives() -> None:
    user = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    cand = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]]])
    ids = torch.tensor([[5, 6], [7, 5]])  # user 1's negative is user 0's target: masked for user 0
    got = retrieval_ce(user, cand, ids, in_batch=True)
    # user 0 pool logits: [1 (pos), 0, 0, masked] ; user 1 pool logits: [0, 0, 1 (pos), 0]
    want = (-math.log(math.e / (math.e + 2)) - math.log(math.e / (math.e + 3))) / 2
    assert got.item() == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError):
        retrieval_ce(user, cand, None, in_batch=True)


def test_distill_terms_by_hand() -> None:
    u = torch.tensor([[3.0, 4.0], [0.0, 2.0]])  # normalised: (0.6, 0.8), (0, 1)
    c = torch.tensor([[1.0, 0.0], [0.0, 5.0]])  # normalised: (1, 0), (0, 1)
    t = distill_loss_reference(u, c)
    assert t.mse.item() == pytest.approx(((0.6 - 1) ** 2 + 0.8**2) / 4, rel=1e-6)
    assert t.uniformity_user.item() == pytest.approx(math.exp(-2 * (0.6**2 + 0.2**2)), rel=1e-6)
    assert t.uniformity_teacher.item() == pytest.approx(math.exp(-2 * 2.0), rel=1e-6)


def test_uniformity_matches_the_authors_pdist_formula_and_handles_one_row() -> None:
    x = F.normalize(torch.randn(9, 16, dtype=torch.float64), dim=-1)
    want = torch.pdist(x, p=2).pow(2).mul(-2).exp().mean()
    torch.testing.assert_close(uniformity_reference(x), want)
    one = torch.randn(1, 4, requires_grad=True)
    u = uniformity_reference(one)
    u.backward()
    assert u.item() == 0.0 and one.grad is not None


def test_distill_gradcheck_and_dispatcher() -> None:
    u = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    c = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)

    def f(a, b):
        return torch.stack(list(distill_loss_reference(a, b)))

    # the reference computes in fp32 by contract; gradcheck a float64 copy of the same math
    def f64(a, b):
        a_hat, b_hat = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
        return torch.stack(
            [F.mse_loss(a_hat, b_hat), uniformity_reference(a_hat), uniformity_reference(b_hat)]
        )

    assert torch.autograd.gradcheck(f64, (u, c))
    torch.testing.assert_close(f(u, c).double(), f64(u, c), rtol=1e-5, atol=1e-6)
    for a, b in zip(distill_loss(u, c), distill_loss_reference(u, c)):
        assert torch.equal(a, b)


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 8, generator=g), torch.randn(4, 3, 8, generator=g), torch.randn(4, 8, generator=g)


def test_total_is_the_weighted_sum_and_switches_drop_terms() -> None:
    user, cand, teacher = _inputs()
    full = llmsrec_loss(user, cand, teacher, LossConfig(distill_weight=0.5, uniformity_weight=2.0))
    want = (
        full["retrieval"]
        + 0.5 * full["distill_mse"]
        + 2.0 * (full["uniformity_user"] + full["uniformity_teacher"])
    )
    torch.testing.assert_close(full["loss"], want)
    assert all(full[k] > 0 for k in ("distill_mse", "uniformity_user", "uniformity_teacher"))

    no_distill = llmsrec_loss(user, cand, None, LossConfig(distill=False))
    assert no_distill["distill_mse"] == 0 and no_distill["uniformity_teacher"] == 0
    torch.testing.assert_close(no_distill["uniformity_user"], full["uniformity_user"])
    torch.testing.assert_close(no_distill["loss"], full["retrieval"] + full["uniformity_user"])

    no_uni = llmsrec_loss(user, cand, teacher, LossConfig(uniformity=False))
    assert no_uni["uniformity_user"] == 0 and no_uni["uniformity_teacher"] == 0
    torch.testing.assert_close(no_uni["loss"], full["retrieval"] + full["distill_mse"])

    with pytest.raises(ValueError, match="teacher"):
        llmsrec_loss(user, cand, None, LossConfig())


def test_loss_config_validation() -> None:
    with pytest.raises(ConfigError, match="num_negatives"):
        LossConfig(num_negatives=-1)
    with pytest.raises(ConfigError, match="in_batch"):
        LossConfig(num_negatives=0)
    with pytest.raises(ConfigError, match="distill_weight"):
        LossConfig(distill_weight=-1.0)
    LossConfig(num_negatives=0, in_batch_negatives=True)
