"""Useful matmul FLOPs of the frozen decoder body, counted over real (non-padding) tokens.

For a Llama-style body with `L` layers, width `H`, query width `Hq = heads * head_dim`, key/value width
`Hkv = kv_heads * head_dim` and MLP width `F`, the linear weights of one layer hold

    P = H*Hq + 2*H*Hkv + Hq*H + 3*H*F          (q, k, v, o; gate, up, down)

and one sequence of `n` real tokens costs, per layer (2 FLOPs per multiply-add):

    forward    linear 2*P*n        causal attention  QK^T and AV over t+1 keys for query t:
                                                      2 * sum_t 2*Hq*(t+1) = 2*Hq*n*(n+1)
    backward   linear 2*P*n        (input gradients only: the weights are frozen, so no dW GEMM)
               attention 4*Hq*n*(n+1)   (dQ, dK from dS; dV, dP from dO: twice the forward)

Only matmuls count (norms, rotary, activations and softmax are elementwise and left out, as in the
usual MFU accounting); a flash-attention backward's recomputation of QK^T does not count as useful.
The vocabulary projection is never run, so it is not counted either. "Useful" means over real tokens,
with a constant prompt head counted once: padding, duplicated item prompts, re-running the same head
for every prompt, and recomputation are work the hardware did that the model did not need.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BodyShape:
    """The matmul-relevant sizes of a decoder body."""

    layers: int
    hidden: int
    q_width: int
    kv_width: int
    mlp: int

    @staticmethod
    def from_hf_config(cfg) -> BodyShape:
        """From a Hugging Face Llama/Qwen/Mistral-style config."""
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        kv = getattr(cfg, "num_key_value_heads", None) or heads
        return BodyShape(
            layers=cfg.num_hidden_layers,
            hidden=cfg.hidden_size,
            q_width=heads * head_dim,
            kv_width=kv * head_dim,
            mlp=cfg.intermediate_size,
        )

    @property
    def linear_params_per_layer(self) -> int:
        h = self.hidden
        return h * self.q_width + 2 * h * self.kv_width + self.q_width * h + 3 * h * self.mlp

    def gemm_shapes(self, tokens: int) -> list[tuple[int, int, int]]:
        """The (M, K, N) of this body's linear layers for `tokens` rows: the GEMMs a step is made of."""
        h = self.hidden
        return [
            (tokens, h, self.q_width),
            (tokens, h, self.kv_width),
            (tokens, self.q_width, h),
            (tokens, h, self.mlp),
            (tokens, self.mlp, h),
        ]


def body_flops(
    shape: BodyShape,
    lengths: np.ndarray | list[int],
    *,
    backward: bool = False,
    prefix: int = 0,
    grad_prefix: int | np.ndarray = 0,
) -> float:
    """Matmul FLOPs of the body over sequences of the given real lengths: forward, or forward plus an
    input-gradient backward when `backward`. With `prefix` = p, each sequence's first p positions are
    not computed (their keys/values are cached) and only positions p..n-1 run, still attending to
    all earlier keys. With `grad_prefix` = g (one value, or one per sequence), positions before g
    run without a graph (nothing trainable reaches them), so the backward starts at g' = max(p, g):

        forward   = L * sum_n (2*P*(n-p) + 2*Hq*(n*(n+1) - p*(p+1)))
        backward  = L * sum_n (2*P*(n-g') + 4*Hq*(n*(n+1) - g'*(g'+1)))
    """
    n = np.asarray(lengths, dtype=np.float64)
    p = np.minimum(float(prefix), n)
    g = np.minimum(np.maximum(p, np.asarray(grad_prefix, dtype=np.float64)), n)

    def work(skip: np.ndarray, attn_factor: float) -> float:
        lin = 2.0 * shape.linear_params_per_layer * (n - skip).sum()
        return shape.layers * (
            lin + attn_factor * 2.0 * shape.q_width * (n * (n + 1) - skip * (skip + 1)).sum()
        )

    return float(work(p, 1.0) + (work(g, 2.0) if backward else 0.0))
