"""The FLOP formulas against torch's own FLOP counter on a tiny random Llama body (eager attention, so
every matmul is visible to the counter, which counts attention as full n x n, not causal)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaModel

from dist_srec.models.flops import BodyShape, body_flops


def _body() -> tuple[LlamaModel, BodyShape]:
    cfg = LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                      num_attention_heads=6, num_key_value_heads=2, attn_implementation="eager")  # fmt: skip
    torch.manual_seed(0)
    body = LlamaModel(cfg).eval().requires_grad_(False)
    return body, BodyShape.from_hf_config(cfg)


def test_shape_reads_gqa_widths() -> None:
    _, s = _body()
    assert (s.layers, s.hidden, s.q_width, s.kv_width, s.mlp) == (3, 48, 48, 16, 80)
    assert s.linear_params_per_layer == 48 * 48 + 2 * 48 * 16 + 48 * 48 + 3 * 48 * 80


def test_forward_and_backward_match_the_counter() -> None:
    body, s = _body()
    n = 11
    emb = torch.randn(1, n, s.hidden, requires_grad=True)
    with FlopCounterMode(display=False) as fwd_counter:
        h = body(inputs_embeds=emb, use_cache=False).last_hidden_state
    with FlopCounterMode(display=False) as bwd_counter:
        h.sum().backward()
    full_attn_fwd = s.layers * 4 * s.q_width * n * n  # QK^T and AV, every pair counted
    causal_attn_fwd = s.layers * 2 * s.q_width * n * (n + 1)
    fwd = body_flops(s, [n])
    assert fwd_counter.get_total_flops() - full_attn_fwd == fwd - causal_attn_fwd
    # Frozen weights: the backward runs dX GEMMs only, one per linear; attention backward is 2x forward.
    both = body_flops(s, [n], backward=True)
    assert bwd_counter.get_total_flops() - 2 * full_attn_fwd == both - fwd - 2 * causal_attn_fwd


def test_sums_over_sequences_and_ignores_padding() -> None:
    _, s = _body()
    lengths = np.array([3, 7, 5])
    assert body_flops(s, lengths) == sum(body_flops(s, [n]) for n in lengths)
    assert body_flops(s, [0]) == 0.0


def test_prefix_skips_the_cached_head() -> None:
    _, s = _body()
    n, p = 20, 6
    # the suffix's work is the whole sequence's minus the head's own (the head attends only to itself)
    for bwd in (False, True):
        assert body_flops(s, [n], prefix=p, backward=bwd) == body_flops(s, [n], backward=bwd) - body_flops(
            s, [p], backward=bwd
        )
    assert body_flops(s, [n], prefix=0) == body_flops(s, [n])


def test_grad_prefix_leaves_only_the_forward_of_the_leading_positions() -> None:
    _, s = _body()
    n, p, g = 20, 6, 11
    fwd_only = body_flops(s, [n], prefix=p)
    both = body_flops(s, [n], prefix=p, backward=True, grad_prefix=g)
    # the backward of positions g.. is the backward of a sequence whose first g positions are cached
    bwd_from_g = body_flops(s, [n], prefix=g, backward=True) - body_flops(s, [n], prefix=g)
    assert both == fwd_only + bwd_from_g
    assert body_flops(s, [n], prefix=p, backward=True, grad_prefix=0) == body_flops(
        s, [n], prefix=p, backward=True
    )
    # one value per sequence, and never past a sequence's end
    lengths = np.array([20, 8])
    per_row = body_flops(s, lengths, backward=True, grad_prefix=np.array([11, 30]))
    assert per_row == body_flops(s, [20], backward=True, grad_prefix=11) + body_flops(s, [8])
