"""The only trainable modules of LLM-SRec.

| module         | maps                      | layers                                            |
|----------------|---------------------------|---------------------------------------------------|
| `item_proj`    | teacher item D -> H       | Linear(D,H), LayerNorm(H), LeakyReLU, Linear(H,H) |
| `user_out`     | the [UserOut] vector, [H] | a parameter                                       |
| `item_out`     | the [ItemOut] vector, [H] | a parameter                                       |
| `user_head`    | h_[UserOut] H -> d        | Linear(H,2048), LayerNorm, LeakyReLU, Linear(2048,d) |
| `item_head`    | h_[ItemOut] H -> d        | same shape as user_head                           |
| `teacher_proj` | teacher user D -> d       | Linear(D,128), LayerNorm, GELU, Linear(128,d)     |

Normalisation and activation sit between the two linears, as in the authors' code; their teacher
projection uses GELU where the others use LeakyReLU, and so do we. Linear weights are Xavier-normal
(as theirs), biases zero. The out vectors start as N(mean, std²) of the LM's embedding table
(as theirs), so they look like ordinary token embeddings to the frozen LM. d = 128.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dist_srec.models.zero3 import gathered, is_available


def mlp(d_in: int, d_hidden: int, d_out: int, act: type[nn.Module] = nn.LeakyReLU) -> nn.Sequential:
    """Linear(d_in, d_hidden) -> LayerNorm -> act -> Linear(d_hidden, d_out), Xavier-normal weights."""
    net = nn.Sequential(nn.Linear(d_in, d_hidden), nn.LayerNorm(d_hidden), act(), nn.Linear(d_hidden, d_out))
    for layer in (net[0], net[3]):
        nn.init.xavier_normal_(layer.weight)
        nn.init.zeros_(layer.bias)
    return net


class LLMSRecHeads(nn.Module):
    """All trainable parameters: item projection, out-token vectors, user/item heads, teacher projection.

    Args:
        teacher_dim: D, the teacher's embedding width.
        lm_hidden: H, the LM's hidden width.
        head_hidden: width inside user_head / item_head (2048 in the paper).
        out_dim: d, the width of user / item representations (128).
        teacher_hidden: width inside teacher_proj (128).
    """

    def __init__(
        self,
        *,
        teacher_dim: int,
        lm_hidden: int,
        head_hidden: int = 2048,
        out_dim: int = 128,
        teacher_hidden: int = 128,
    ) -> None:
        super().__init__()
        self.item_proj = mlp(teacher_dim, lm_hidden, lm_hidden)
        self.user_out = nn.Parameter(torch.zeros(lm_hidden))
        self.item_out = nn.Parameter(torch.zeros(lm_hidden))
        self.user_head = mlp(lm_hidden, head_hidden, out_dim)
        self.item_head = mlp(lm_hidden, head_hidden, out_dim)
        self.teacher_proj = mlp(teacher_dim, teacher_hidden, out_dim, act=nn.GELU)
        nn.init.normal_(self.user_out, std=0.02)
        nn.init.normal_(self.item_out, std=0.02)

    @torch.no_grad()
    def init_out_vectors(self, table: Tensor, generator: torch.Generator | None = None) -> None:
        """Draw user_out / item_out from N(mean, std²) of the LM's embedding table [V, H]."""
        t = table.detach().float()
        mean, std = float(t.mean()), float(t.std())
        for p in (self.user_out, self.item_out):
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float32) * std + mean)

    def out_vectors(self) -> Tensor:
        """[2, H]: row 0 replaces [UserOut], row 1 replaces [ItemOut].

        Under one ZeRO-3 engine over the LM and the heads (`dist_srec.parallel.one_engine`) the engine's
        forward gathers these two (registered as its external parameters); outside it (evaluation,
        without gradients) they are gathered here, a collective every rank makes at the same point."""
        vectors = [self.user_out, self.item_out]
        if all(is_available(p) for p in vectors):
            return torch.stack(vectors)
        if torch.is_grad_enabled():
            raise RuntimeError(
                "partitioned out vectors with gradients on: train through the DeepSpeed engine"
            )
        with gathered(vectors):
            return torch.stack(vectors).detach().clone()
