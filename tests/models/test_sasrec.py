"""SASRec: reference parity, padding and width invariance, causality, scoring, config validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dist_srec.errors import ConfigError
from dist_srec.models.sasrec import SASRec, SASRecConfig, sasrec_embed


class ReferenceSASRec(nn.Module):
    """The LLM-SRec teacher's `log2feats` (SeqRec/sasrec/model.py), ported verbatim in structure:
    nn.MultiheadAttention on [L, B, D], Conv1d feed-forward with the residual inside."""

    def __init__(self, n: int, d: int, blocks: int, heads: int, maxlen: int):
        super().__init__()
        self.item_emb = nn.Embedding(n + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(maxlen, d)
        self.attn_ln = nn.ModuleList(nn.LayerNorm(d, eps=1e-8) for _ in range(blocks))
        self.attn = nn.ModuleList(nn.MultiheadAttention(d, heads, 0.0) for _ in range(blocks))
        self.fwd_ln = nn.ModuleList(nn.LayerNorm(d, eps=1e-8) for _ in range(blocks))
        self.conv1 = nn.ModuleList(nn.Conv1d(d, d, 1) for _ in range(blocks))
        self.conv2 = nn.ModuleList(nn.Conv1d(d, d, 1) for _ in range(blocks))
        self.last_ln = nn.LayerNorm(d, eps=1e-8)

    def forward(self, log_seqs: torch.Tensor) -> torch.Tensor:
        seqs = self.item_emb(log_seqs) * self.item_emb.embedding_dim**0.5
        positions = torch.arange(log_seqs.shape[1]).expand_as(log_seqs)
        seqs = seqs + self.pos_emb(positions)
        timeline_mask = log_seqs == 0
        seqs = seqs * ~timeline_mask.unsqueeze(-1)
        tl = seqs.shape[1]
        attention_mask = ~torch.tril(torch.ones((tl, tl), dtype=torch.bool))
        for i in range(len(self.attn)):
            seqs = seqs.transpose(0, 1)
            q = self.attn_ln[i](seqs)
            mha, _ = self.attn[i](q, seqs, seqs, attn_mask=attention_mask)
            seqs = (q + mha).transpose(0, 1)
            seqs = self.fwd_ln[i](seqs)
            ffn = self.conv2[i](torch.relu(self.conv1[i](seqs.transpose(-1, -2)))).transpose(-1, -2)
            seqs = (ffn + seqs) * ~timeline_mask.unsqueeze(-1)
        return self.last_ln(seqs)


def _copy_into_reference(m: SASRec, ref: ReferenceSASRec) -> None:
    with torch.no_grad():
        ref.item_emb.weight.copy_(m.item_emb.weight)
        ref.pos_emb.weight.copy_(m.pos_emb.weight)
        ref.last_ln.load_state_dict(m.last_norm.state_dict())
        for i, b in enumerate(m.blocks):
            ref.attn_ln[i].load_state_dict(b.attn_norm.state_dict())
            ref.fwd_ln[i].load_state_dict(b.ffn_norm.state_dict())
            a = ref.attn[i]
            a.in_proj_weight.copy_(
                torch.cat([b.attn.q_proj.weight, b.attn.k_proj.weight, b.attn.v_proj.weight])
            )
            a.in_proj_bias.copy_(torch.cat([b.attn.q_proj.bias, b.attn.k_proj.bias, b.attn.v_proj.bias]))
            a.out_proj.weight.copy_(b.attn.out_proj.weight)
            a.out_proj.bias.copy_(b.attn.out_proj.bias)
            ref.conv1[i].weight.copy_(b.ffn.fc1.weight[:, :, None])
            ref.conv1[i].bias.copy_(b.ffn.fc1.bias)
            ref.conv2[i].weight.copy_(b.ffn.fc2.weight[:, :, None])
            ref.conv2[i].bias.copy_(b.ffn.fc2.bias)


def _model(n: int = 50, **kw) -> SASRec:
    torch.manual_seed(0)
    return SASRec(SASRecConfig(num_items=n, hidden=16, max_len=12, **kw)).eval()


def _history(b: int = 5, length: int = 12, n: int = 50, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    h = torch.randint(1, n + 1, (b, length), generator=g)
    for row, pad in enumerate([0, 3, 7, 11, 5][:b]):
        h[row, :pad] = 0  # left padding of various lengths
    return h


@pytest.mark.parametrize("heads", [1, 2])
def test_matches_reference_port(heads: int) -> None:
    m = _model(num_blocks=2, num_heads=heads)
    ref = ReferenceSASRec(50, 16, 2, heads, 12).eval()
    _copy_into_reference(m, ref)
    h = _history()
    torch.testing.assert_close(m(h), ref(h), atol=1e-5, rtol=1e-5)


def test_sasrec_embed_math() -> None:
    table, pos = torch.randn(6, 4), torch.randn(3, 4)
    ids = torch.tensor([[0, 2, 5], [0, 0, 1]])
    out = sasrec_embed(ids, table, pos, 2.0)
    assert torch.equal(out[0, 0], torch.zeros(4)) and torch.equal(out[1, 1], torch.zeros(4))
    torch.testing.assert_close(out[0, 2], table[5] * 2.0 + pos[2])
    torch.testing.assert_close(out[1, 2], table[1] * 2.0 + pos[2])


def test_width_invariance_and_truncation() -> None:
    """A history gives the same user vector at any batch width (run at max_len internally)."""
    m = _model()
    h = _history(length=6)
    u = m.user_vector(h)
    wide = torch.nn.functional.pad(h, (6, 0))  # width 12
    torch.testing.assert_close(m.user_vector(wide), u)
    longer = torch.cat([torch.randint(1, 51, (5, 4)), wide], 1)  # width 16 > max_len: oldest 4 dropped
    torch.testing.assert_close(m.user_vector(longer), u)
    assert m(h).shape == (5, 6, 16) and m(longer).shape == (5, 12, 16)


def test_padding_positions_are_zero_before_final_norm_and_causal() -> None:
    m = _model()
    h = _history()
    out = m(h)
    changed = h.clone()
    changed[:, -1] = (changed[:, -1] % 50) + 1  # change only the most recent item
    out2 = m(changed)
    torch.testing.assert_close(out[:, :-1], out2[:, :-1])  # earlier positions never see it
    assert not torch.allclose(out[:, -1], out2[:, -1])


def test_score_is_dot_with_unscaled_item_embeddings() -> None:
    m = _model()
    h, items = _history(), torch.randint(1, 51, (5, 7))
    s = m.score(h, items)
    expect = (m.user_vector(h)[:, None, :] * m.item_embeddings()[items]).sum(-1)
    torch.testing.assert_close(s, expect)
    assert m.item_embeddings().shape == (51, 16)
    assert torch.equal(m.item_embeddings()[0], torch.zeros(16))


def test_candidate_logits_match_features() -> None:
    m = _model()
    h = _history()
    cands = torch.randint(1, 51, (5, 12, 2))
    logits = m(h, cands)
    feats = m(h)
    torch.testing.assert_close(logits[..., 1], (feats * m.item_emb(cands[..., 1])).sum(-1))


def test_dropout_only_in_training() -> None:
    m = _model(dropout=0.5)
    h = _history()
    torch.testing.assert_close(m(h), m(h))
    m.train()
    assert not torch.allclose(m(h), m(h))


def test_init_scale_matches_reference_xavier() -> None:
    torch.manual_seed(0)
    m = SASRec(SASRecConfig(num_items=2000))
    std = float(m.item_emb.weight[1:].detach().std())
    assert math.isclose(std, math.sqrt(2.0 / (2001 + 64)), rel_tol=0.05)


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"num_items": -1}, "num_items"),
        ({"num_items": 5, "hidden": 10, "num_heads": 3}, "num_heads"),
        ({"num_items": 5, "dropout": 1.0}, "dropout"),
        ({"num_items": 5, "attn_dropout": -0.1}, "attn_dropout"),
        ({"num_items": 5, "max_len": 0}, "max_len"),
    ],
)
def test_config_validation_names_the_field(kw: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"'{field}'"):
        SASRecConfig(**kw)


def test_a_model_is_never_built_without_its_catalog_size() -> None:
    """0 in a run config means "the catalog's"; building a model with it is refused."""
    with pytest.raises(ConfigError, match=r"'num_items': a model needs the catalog's item count"):
        SASRec(SASRecConfig())


def test_gradient_never_reaches_padding_row() -> None:
    m = _model().train()
    h = _history()
    m(h, torch.stack([h, h], -1)).sum().backward()
    assert np.allclose(m.item_emb.weight.grad[0].numpy(), 0.0)
