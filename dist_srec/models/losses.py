"""LLM-SRec losses: retrieval cross-entropy, distillation MSE, uniformity.

    L = L_retrieval + w_d · MSE(û, ĉ) + w_u · (U(û) + U(ĉ))

with u = user_head(h_[UserOut]) [B, d], c = teacher_proj(teacher user vector) [B, d], ˆ denoting L2
normalisation and U the log-free Gaussian potential (see `dist_srec.kernels.distill_loss.reference`
for the math and gradients). All terms are computed in fp32.

Retrieval: with candidate vectors v [B, C, d] (C = 1 + K: the target first, then K negatives),
    logits_bc = u_b · v_bc   (plain dot product, no temperature, as the authors' code)
    L_retrieval = mean_b CE(logits_b, 0)
With in-batch negatives the pool is every candidate of the batch, [B·C, d]: row b scores all B·C,
its positive sits at b·C, and pool entries holding the same item as its target are masked out.

Ablation switches (the paper's Table 4): `distill=False` drops MSE and the teacher-side uniformity
(without the MSE the teacher side no longer touches the user vector); `uniformity=False` drops both
uniformity terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dist_srec.errors import ConfigError
from dist_srec.kernels.distill_loss import distill_loss


@dataclass(kw_only=True)
class LossConfig:
    """Loss terms and their switches."""

    num_negatives: int = 3
    """K sampled negatives per user (the paper uses 3)."""
    in_batch_negatives: bool = False
    """Also score every other user's candidates as negatives."""
    distill: bool = True
    """Distillation MSE (ablation: False)."""
    uniformity: bool = True
    """Uniformity on the user side and, with distillation, the teacher side (ablation: False)."""
    distill_weight: float = 1.0
    uniformity_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.num_negatives < 0:
            raise ConfigError(f"config field 'num_negatives': must be >= 0, got {self.num_negatives}")
        if self.num_negatives == 0 and not self.in_batch_negatives:
            raise ConfigError(
                "config field 'num_negatives': 0 needs in_batch_negatives=True (else no negatives)"
            )
        for name in ("distill_weight", "uniformity_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config field '{name}': must be >= 0, got {getattr(self, name)}")


def retrieval_ce(
    user: Tensor,  # [B, d]
    candidates: Tensor,  # [B, C, d], target at index 0
    candidate_ids: Tensor | None = None,  # [B, C] item ids, needed for in-batch negatives
    *,
    in_batch: bool = False,
) -> Tensor:
    """Cross-entropy of the target among the candidates (see module docstring); a scalar in fp32."""
    u, v = user.float(), candidates.float()
    b, c, _ = v.shape
    if not in_batch:
        logits = torch.einsum("bd,bcd->bc", u, v)  # [B, C]
        return F.cross_entropy(logits, torch.zeros(b, dtype=torch.long, device=u.device))
    if candidate_ids is None:
        raise ValueError("in-batch negatives need candidate_ids to mask false negatives")
    logits = u @ v.reshape(b * c, -1).T  # [B, B*C]
    pos = torch.arange(b, device=u.device) * c
    same = candidate_ids.reshape(1, b * c) == candidate_ids[:, :1]  # pool entry == row's target
    same[torch.arange(b, device=u.device), pos] = False
    logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, pos)


def llmsrec_loss(
    user: Tensor,  # [B, d]
    candidates: Tensor,  # [B, C, d]
    teacher: Tensor | None,  # [B, d]: teacher_proj(teacher user vector); None when distill is off
    cfg: LossConfig,
    candidate_ids: Tensor | None = None,  # [B, C]
) -> dict[str, Tensor]:
    """All loss terms as fp32 scalars: `loss` (the weighted sum to backpropagate), `retrieval`,
    `distill_mse`, `uniformity_user`, `uniformity_teacher` (zeros where switched off)."""
    ret = retrieval_ce(user, candidates, candidate_ids, in_batch=cfg.in_batch_negatives)
    zero = ret.new_zeros(())
    if cfg.distill:
        if teacher is None:
            raise ValueError("distillation is on but no teacher vectors were given")
        terms = distill_loss(user, teacher, mse=True, uniformity=cfg.uniformity)
        mse, uni_u, uni_t = terms.mse, terms.uniformity_user, terms.uniformity_teacher
    else:
        mse, uni_t = zero, zero
        uni_u = (
            distill_loss(user, user, mse=False, uniformity=True).uniformity_user if cfg.uniformity else zero
        )
    loss = ret + cfg.distill_weight * mse + cfg.uniformity_weight * (uni_u + uni_t)
    return {
        "loss": loss,
        "retrieval": ret,
        "distill_mse": mse,
        "uniformity_user": uni_u,
        "uniformity_teacher": uni_t,
    }
