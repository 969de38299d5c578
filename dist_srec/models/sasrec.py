"""SASRec (Kang & McAuley, 2018): the CF-SRec teacher that LLM-SRec distils.

Reference semantics: the SASRec that LLM-SRec pre-trains (its `SeqRec/sasrec/model.py`, the pre-2023
pmixer/SASRec.pytorch block). For a left-padded history `s` of width L (0 = padding):

    x_l   = (E[s_l] * sqrt(D) + P[l]) * 1[s_l != 0]            embedding (`sasrec_embed`), then dropout
    block:  q = LN_a(x);  x = q + Attn(q, x, x)                 causal; queries from the normed input
            x = LN_f(x);  x = x + FFN(x);  x = x * 1[s != 0]    FFN(x) = drop(W2 relu(drop(W1 x)))
    h     = LN_out(x)                                           [B, L, D]

The user vector is h[:, -1] (the most recent position), and the score of item i is <h[:, -1], E[i]>
(unscaled E). Item ids are 1..N; row 0 of E is padding. Histories are always run at width
`max_len` (left-padded, or truncated to the most recent `max_len` items), as the reference does, so a
user's output does not depend on the width of the batch it came in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dist_srec.config import check
from dist_srec.kernels.seq_lookup import seq_lookup


@dataclass(kw_only=True)
class SASRecConfig:
    """Shape and regularisation of the teacher. Defaults are the LLM-SRec paper's (Appendix D)."""

    num_items: int = 0
    """N: items are 1..N; the embedding table has N+1 rows (row 0 = padding). 0 in a run config: the
    catalog's, set when training starts (a model is never built with 0)."""
    hidden: int = 64
    """D: item embedding and hidden size."""
    num_blocks: int = 2
    num_heads: int = 1
    dropout: float = 0.1
    """Embedding and feed-forward dropout (and attention-weight dropout unless `attn_dropout` is set)."""
    attn_dropout: float | None = None
    """Dropout on the attention weights; None = `dropout`, as the reference. On CPU, attention with
    dropout falls back to an explicit [B, h, L, L] path that costs ~8x the fused one; 0 avoids it."""
    max_len: int = 128
    """Positions; longer histories keep their most recent `max_len` items."""
    ln_eps: float = 1e-8
    """LayerNorm epsilon, as the reference."""

    def __post_init__(self) -> None:
        check(self.num_items >= 0, "num_items", f"must be >= 0, got {self.num_items}")
        check(self.hidden >= 1, "hidden", f"must be >= 1, got {self.hidden}")
        check(self.num_blocks >= 1, "num_blocks", f"must be >= 1, got {self.num_blocks}")
        check(self.num_heads >= 1, "num_heads", f"must be >= 1, got {self.num_heads}")
        check(
            self.hidden % self.num_heads == 0,
            "num_heads",
            f"hidden={self.hidden} is not divisible by num_heads={self.num_heads}",
        )
        check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        a = self.attn_dropout
        check(a is None or 0.0 <= a < 1.0, "attn_dropout", f"must be None or in [0, 1), got {a}")
        check(self.max_len >= 1, "max_len", f"must be >= 1, got {self.max_len}")
        check(self.ln_eps > 0, "ln_eps", f"must be > 0, got {self.ln_eps}")


def sasrec_embed(ids: Tensor, item_table: Tensor, pos_table: Tensor, scale: float) -> Tensor:
    """The SASRec input embedding, padding masked, through the `seq_lookup` kernel dispatcher.

        out[b, l] = (item_table[ids[b, l]] * scale + pos_table[l]) * 1[ids[b, l] != 0]

    Args:
        ids: [B, L] int64 item ids, 0 = padding.
        item_table: [N+1, D] item embeddings.
        pos_table: [L, D] position embeddings, row l for column l of `ids`.
        scale: sqrt(D) in SASRec.
    Returns:
        [B, L, D] in the dtype of `item_table`. The torch reference is
        `dist_srec.kernels.seq_lookup.seq_lookup_reference`; the fused kernel is its `triton_impl`.
    """
    return seq_lookup(ids, item_table, pos_table, scale)


class CausalSelfAttention(nn.Module):
    """Multi-head attention with queries from `q_in` and keys/values from `kv_in`, causal.

    Equivalent to `nn.MultiheadAttention(D, heads, dropout)(q, kv, kv, attn_mask=causal)` with
    dropout on the attention weights, written on `scaled_dot_product_attention`.
    """

    def __init__(self, hidden: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, hidden)

    def forward(self, q_in: Tensor, kv_in: Tensor) -> Tensor:  # [B, L, D] x2 -> [B, L, D]
        b, length, d = q_in.shape
        h = self.num_heads

        def split(x: Tensor) -> Tensor:  # [B, L, D] -> [B, h, L, D/h]
            return x.view(b, length, h, d // h).transpose(1, 2)

        q, k, v = split(self.q_proj(q_in)), split(self.k_proj(kv_in)), split(self.v_proj(kv_in))
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        return self.out_proj(out.transpose(1, 2).reshape(b, length, d))


class PointWiseFeedForward(nn.Module):
    """FFN(x) = drop(W2 relu(drop(W1 x))): the reference's two kernel-1 Conv1d, as Linear layers."""

    def __init__(self, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(F.relu(self.drop(self.fc1(x)))))


class SASRecBlock(nn.Module):
    """One reference block: q = LN(x); x = q + Attn(q, x); x = LN(x); x = x + FFN(x); mask padding."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.attn_norm = nn.LayerNorm(cfg.hidden, eps=cfg.ln_eps)
        attn_p = cfg.dropout if cfg.attn_dropout is None else cfg.attn_dropout
        self.attn = CausalSelfAttention(cfg.hidden, cfg.num_heads, attn_p)
        self.ffn_norm = nn.LayerNorm(cfg.hidden, eps=cfg.ln_eps)
        self.ffn = PointWiseFeedForward(cfg.hidden, cfg.dropout)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:  # x [B, L, D], keep [B, L, 1]
        q = self.attn_norm(x)
        x = q + self.attn(q, x)
        x = self.ffn_norm(x)
        x = x + self.ffn(x)
        return x * keep


class SASRec(nn.Module):
    """The teacher. See the module docstring for the math; shapes use B batch, L history, D hidden."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        check(cfg.num_items >= 1, "num_items", f"a model needs the catalog's item count, got {cfg.num_items}")
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.num_items + 1, cfg.hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.hidden)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(SASRecBlock(cfg) for _ in range(cfg.num_blocks))
        self.last_norm = nn.LayerNorm(cfg.hidden, eps=cfg.ln_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-normal on every matrix (the reference's init, embeddings included); zero padding row."""
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.xavier_normal_(p)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def _fit(self, history: Tensor) -> Tensor:
        """[B, L] -> [B, max_len]: left-pad with 0, or keep the most recent `max_len` columns."""
        width, m = history.shape[1], self.cfg.max_len
        if width >= m:
            return history[:, width - m :]
        return F.pad(history, (m - width, 0), value=0)

    def forward(self, history: Tensor, candidates: Tensor | None = None) -> Tensor:
        """Sequence features, or the logits of per-position candidates.

        Args:
            history: [B, L] int64 item ids, left-padded with 0 (most recent at L-1).
            candidates: optional [B, L', K] item ids to score at every position (training: positive
                and sampled negative), where L' = min(L, max_len).
        Returns:
            [B, L', D] features h, or [B, L', K] logits <h[b, l], E[candidates[b, l, k]]> if candidates.
        """
        width = min(history.shape[1], self.cfg.max_len)
        ids = self._fit(history)
        keep = (ids != 0).unsqueeze(-1).to(self.item_emb.weight.dtype)
        x = sasrec_embed(ids, self.item_emb.weight, self.pos_emb.weight, math.sqrt(self.cfg.hidden))
        x = self.emb_dropout(x)
        for block in self.blocks:
            x = block(x, keep)
        h = self.last_norm(x)[:, -width:]
        if candidates is None:
            return h
        return torch.einsum("bld,blkd->blk", h, self.item_emb(candidates))

    def user_vector(self, history: Tensor) -> Tensor:
        """[B, L] history -> [B, D]: the last position's output, the user representation O_u."""
        return self.forward(history)[:, -1]

    def item_embeddings(self) -> Tensor:
        """[N+1, D] item table E (row 0 = padding); item i scores <user_vector, E[i]>."""
        return self.item_emb.weight

    def score(self, history: Tensor, item_ids: Tensor) -> Tensor:
        """[B, L] history, [B, N] candidate ids -> [B, N] scores <user_vector, E[item]>."""
        u = self.user_vector(history)
        return torch.einsum("bd,bnd->bn", u, self.item_emb(item_ids))
