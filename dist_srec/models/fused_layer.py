"""A Llama-form decoder layer as two compiled graphs that every layer shares: `fuse_layers(body)`.

A decoder layer of the Llama form (Llama, SmolLM2, Mistral, Qwen2: RMSNorm, q/k/v projections,
rotary, attention, o projection, RMSNorm, SiLU-gated MLP) computes

    h = rms(x) · w1                       rms(x) = x / sqrt(mean(x², -1) + eps), in fp32, cast back
    q, k, v = h Wqᵀ, h Wkᵀ, h Wvᵀ          [b, heads, t, hd], [b, kv_heads, t, hd] (+ biases, if any)
    q, k = q·cos + rot(q)·sin, k·cos + rot(k)·sin       rot([a, b]) = [-b, a] over the head dim
    a = attention(q, [cache k; k], [cache v; v])        the model's own attention function
    x = x + a Woᵀ
    y = x + (silu(rms(x)·w2 Wgᵀ) * (rms(x)·w2 Wuᵀ)) Wdᵀ

Between the GEMMs that is some twenty elementwise passes over [b, t, H] or [b, t, I] tensors, forward
and backward, each a round trip through memory: on a CPU they took about a third of a training step.
Here the part before the attention (`_qkv`) and the part after it (`_out_mlp`) are each one
`torch.compile`d function that takes the layer's weights as arguments. So the graphs depend only on
shapes and dtypes, never on which layer calls them: every layer shares one graph per function and
grad mode, where compiling each layer module whole specialised every graph on the layer's slot in the
KV cache (a graph per layer and pass kind, hundreds for a 30-layer LM). The attention itself stays
outside the graphs, in the function the model is configured with (`attn_implementation`), and the KV
cache is updated between the two, as the layer's own forward does.

With `recompute_out` (`LLMConfig.selective_checkpointing`) the part after the attention runs again in
the backward instead of keeping its intermediates. Installed only where it reproduces the layer: the
structure is checked, and layer 0's own forward is compared with the same math run eagerly on a probe
input; anything else (Gemma's (1 + w) norms, Qwen3's q/k norms, a GELU MLP) is refused with the reason. The weights are read directly, so not under
DeepSpeed ZeRO-3 partitioning (whose hooks gather them only for a submodule's own call).
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from dist_srec.models.zero3 import is_partitioned


def _rms(x: Tensor, w: Tensor, eps: float) -> Tensor:
    """Llama's RMSNorm: normalised in fp32, cast back to x's dtype, then scaled by w."""
    x32 = x.float()
    return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _qkv(
    x: Tensor,  # [b, t, H]
    cos: Tensor,  # [b, t, hd]
    sin: Tensor,  # [b, t, hd]
    ln: Tensor,
    wq: Tensor,
    bq: Tensor | None,
    wk: Tensor,
    bk: Tensor | None,
    wv: Tensor,
    bv: Tensor | None,
    eps: float,
    heads: int,
    kv_heads: int,
    hd: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Queries [b, heads, t, hd] and rotated keys, values [b, kv_heads, t, hd] of a layer's input."""
    b, t = x.shape[:2]
    h = _rms(x, ln, eps)
    q = F.linear(h, wq, bq).view(b, t, heads, hd).transpose(1, 2)
    k = F.linear(h, wk, bk).view(b, t, kv_heads, hd).transpose(1, 2)
    v = F.linear(h, wv, bv).view(b, t, kv_heads, hd).transpose(1, 2)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return _rotate(q, cos, sin), _rotate(k, cos, sin), v


def _out_mlp(
    x: Tensor,  # [b, t, H], the layer's input (the residual)
    attn: Tensor,  # [b, t, heads, hd], the attention function's output
    wo: Tensor,
    bo: Tensor | None,
    ln: Tensor,
    wg: Tensor,
    bg: Tensor | None,
    wu: Tensor,
    bu: Tensor | None,
    wd: Tensor,
    bd: Tensor | None,
    eps: float,
) -> Tensor:
    """The layer's output [b, t, H]: residual + o projection, then residual + the SiLU-gated MLP."""
    x = x + F.linear(attn.reshape(*x.shape[:2], -1), wo, bo)
    h = _rms(x, ln, eps)
    return x + F.linear(F.silu(F.linear(h, wg, bg)) * F.linear(h, wu, bu), wd, bd)


def _out_mlp_recomputed(*args: Any) -> Tensor:
    """`_out_mlp` under non-reentrant checkpointing, to be compiled whole: the compiler then tags the
    region's ops for recomputation and the backward graph reruns only those its gradients read (the
    gate and up projections and what leads to them; not the down projection). Checkpointing a compiled
    `_out_mlp` from outside instead reruns the whole function, the down projection included. Whole
    SmolLM2 train step (bf16, 2 cores): +7% to +17% over four runs, typically +10-11% (peak RSS 2.5
    against 4.0-4.3 GB), where the outside form cost +15-19% in the runs of its day
    (benchmarks/results/NOTES.md)."""
    return checkpoint(_out_mlp, *args, use_reentrant=False)


_RECOMPILE_LIMIT = 64


@functools.cache
def _compiled() -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
    # dynamic=None: a second shape recompiles once with dynamic sizes, which every later bucket shape
    # (rows and lengths vary per pass) then shares. dynamic=True failed its guards on the None biases
    # and recompiled a second time for no shape change.
    return (
        torch.compile(_qkv, dynamic=None, fullgraph=True),
        torch.compile(_out_mlp, dynamic=None, fullgraph=True),
        torch.compile(_out_mlp_recomputed, dynamic=None, fullgraph=True),
    )


def _check_form(layer: nn.Module) -> str | None:
    """Why `layer` is not of the Llama form, or None."""
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    for owner, names in (
        (layer, ("input_layernorm", "post_attention_layernorm")),
        (attn, ("q_proj", "k_proj", "v_proj", "o_proj")),
        (mlp, ("gate_proj", "up_proj", "down_proj")),
    ):
        for name in names:
            if owner is None or not isinstance(getattr(owner, name, None), nn.Module):
                return f"no {name}"
    for name in ("input_layernorm", "post_attention_layernorm"):
        norm = getattr(layer, name)
        if not hasattr(norm, "variance_epsilon") or not isinstance(getattr(norm, "weight", None), Tensor):
            return f"{name} ({type(norm).__name__}) is not an RMSNorm with weight and variance_epsilon"
    act = getattr(getattr(attn, "config", None), "hidden_act", None)
    if act not in ("silu", "swish"):
        return f"the MLP's activation is {act!r}, not SiLU"
    for name in ("q_norm", "k_norm"):
        if getattr(attn, name, None) is not None:
            return f"the attention has {name}"
    for name in ("layer_idx", "head_dim", "scaling", "config"):
        if not hasattr(attn, name):
            return f"the attention has no {name}"
    return None


def _bias(m: nn.Module) -> Tensor | None:
    return getattr(m, "bias", None)


def _fused_forward(
    layer: nn.Module,
    run: tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]],
    recompute_out: bool = False,
    math_attention_max_keys: int = 0,
) -> Callable[..., Tensor]:
    """A forward for `layer` with the decoder layer's signature, computing through `run` = (qkv, out_mlp,
    out_mlp with recompute).

    `recompute_out`: when a graph is built, the part after the attention runs as `_out_mlp_recomputed`:
    it keeps only its inputs, and its backward graph recomputes what it needs (o projection, residual,
    RMSNorm, the MLP's gate and up projections; not the down projection, whose output the backward
    never reads). Its intermediates (about 2/3 of a layer's activations) are not held between forward
    and backward.
    `math_attention_max_keys`: see `_cpu_attention`."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # deferred: seconds to import
    from transformers.models.llama.modeling_llama import eager_attention_forward

    attn, mlp = layer.self_attn, layer.mlp
    ln1, ln2 = layer.input_layernorm, layer.post_attention_layernorm
    hd = int(attn.head_dim)
    heads = attn.q_proj.out_features // hd
    kv_heads = attn.k_proj.out_features // hd

    def forward(
        hidden_states: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[Tensor, Tensor] | None = None,
        **kwargs: Any,
    ) -> Tensor:
        qkv, out_mlp, out_mlp_recomputed = run
        cos, sin = position_embeddings
        q, k, v = qkv(hidden_states, cos, sin, ln1.weight, attn.q_proj.weight, _bias(attn.q_proj),
                      attn.k_proj.weight, _bias(attn.k_proj), attn.v_proj.weight, _bias(attn.v_proj),
                      float(ln1.variance_epsilon), heads, kv_heads, hd)  # fmt: skip
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, attn.layer_idx)
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            attn.config._attn_implementation, eager_attention_forward
        )
        interface = _cpu_attention(k, attn.config._attn_implementation, math_attention_max_keys) or interface
        a, _ = interface(attn, q, k, v, attention_mask, dropout=0.0, scaling=attn.scaling,
                         position_ids=position_ids, **kwargs)  # fmt: skip
        f = out_mlp_recomputed if recompute_out and torch.is_grad_enabled() else out_mlp
        return f(hidden_states, a, attn.o_proj.weight, _bias(attn.o_proj), ln2.weight,
                 mlp.gate_proj.weight, _bias(mlp.gate_proj), mlp.up_proj.weight, _bias(mlp.up_proj),
                 mlp.down_proj.weight, _bias(mlp.down_proj), float(ln2.variance_epsilon))  # fmt: skip

    return forward


def _cpu_attention(k: Tensor, impl: str, math_max_keys: int) -> Callable[..., tuple[Tensor, None]] | None:
    """The attention function this layer call runs instead of the configured one, or None (keep it).

    Only where the model is configured with SDPA and runs on a CPU: with grad over at most
    `math_max_keys` keys (k: [b, kv_heads, keys, hd], the cache included; see
    `LLMConfig.math_attention_max_keys`), `math_attention`; else `sdpa_gqa_attention`, SDPA without
    transformers' `repeat_kv` copies. The CPU flash kernel's backward costs about 50 ms a layer for any
    short batch (80 x 32 tokens, bf16, one thread), where `math_attention`'s forward and backward take
    13 together; from about 128 keys (80 prompts) or 200 (20 prompts) flash is faster
    (benchmarks/results/attention_cpu_amx_*.md). GPUs keep transformers' own call."""
    if impl != "sdpa" or k.device.type != "cpu":
        return None
    if math_max_keys and torch.is_grad_enabled() and k.shape[-2] <= math_max_keys:
        return math_attention
    return sdpa_gqa_attention


def _causal(module: nn.Module, tq: int, mask: Tensor | None, kwargs: dict[str, Any]) -> bool:
    """transformers' rule: causal without a mask, for more than one query, if the module is causal."""
    flag = kwargs.get("is_causal")
    return mask is None and tq > 1 and bool(getattr(module, "is_causal", True) if flag is None else flag)


def sdpa_gqa_attention(
    module: nn.Module, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scaling: float, **kwargs: Any
) -> tuple[Tensor, None]:
    """transformers' SDPA attention with grouped-query heads passed as they are (`enable_gqa`), where
    transformers repeats each kv head for its query heads whenever there is a mask (the cached prompt
    head makes one): q [b, heads, tq, hd], k and v [b, kv_heads, tk, hd], mask None (causal), boolean
    or additive -> [b, tq, heads, hd]. On the CPU flash kernel that holds 3x less of k and v for the
    backward (SmolLM2: 9 query heads, 3 kv heads) and is faster (attention_cpu_amx.md: 71 against 80 ms
    backward at 20 x 352 tokens). Not for GPUs: with a mask, enable_gqa sends CUDA to the math kernel."""
    if mask is not None and mask.dim() == 4:
        mask = mask[:, :, :, : k.shape[-2]]
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=_causal(module, q.shape[2], mask, kwargs), scale=scaling,
        enable_gqa=q.shape[1] != k.shape[1],
    )  # fmt: skip
    return out.transpose(1, 2).contiguous(), None


def math_attention(
    module: nn.Module, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scaling: float, **kwargs: Any
) -> tuple[Tensor, None]:
    """SDPA's result, computed as transformers' eager attention does (fp32 softmax), with SDPA's masks
    and without copies of the kv heads: q [b, heads, tq, hd], k and v [b, kv_heads, tk, hd] (query head
    h reads kv head h // (heads / kv_heads)), mask None (causal when the module is, aligned top-left as
    SDPA's `is_causal`), boolean (True: attend) or additive, broadcastable to [b, 1 or heads, tq, tk].

        out = softmax_fp32(q kᵀ · scaling + bias) v   -> [b, tq, heads, hd], as the SDPA interface returns

    Each kv head's query heads are stacked along the query axis, so both products are plain batched
    GEMMs over [b, kv_heads]. For the backward it keeps the fp32 softmax output and bf16 probabilities:
    at short prompts a few MB a layer more than the flash kernel."""
    b, heads, tq, hd = q.shape
    kv = k.shape[1]
    tk = k.shape[2]
    s = torch.matmul(q.reshape(b, kv, heads // kv * tq, hd), k.transpose(-1, -2)).float() * scaling
    s = s.view(b, kv, heads // kv, tq, tk)
    if _causal(module, tq, mask, kwargs):
        mask = torch.ones(tq, tk, dtype=torch.bool, device=s.device).tril()
    if mask is not None:
        if mask.dim() == 4:  # [b, 1 or heads, tq, >= tk] -> [b, 1 or kv, 1 or rep, tq, tk]
            mask = mask[..., :tk]
            mask = mask.unsqueeze(2) if mask.shape[1] == 1 else mask.reshape(-1, kv, heads // kv, tq, tk)
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
    p = s.softmax(-1).to(q.dtype).view(b, kv, heads // kv * tq, tk)
    return torch.matmul(p, v).view(b, heads, tq, hd).transpose(1, 2).contiguous(), None


def _probe(body: nn.Module, layer: nn.Module) -> float:
    """Largest |difference| / max|reference| between `layer`'s own forward and the fused math run
    eagerly, on a 2 x 7 random input (no cache, causal)."""
    p = next(layer.parameters())
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(2, 7, body.config.hidden_size, generator=gen).to(p.device, p.dtype)
    pos = torch.arange(7, device=p.device)[None].expand(2, -1)
    with torch.no_grad():
        cos_sin = body.rotary_emb(x, pos)
        ref = layer(x, position_ids=pos, position_embeddings=cos_sin)
        ref = ref[0] if isinstance(ref, tuple) else ref
        got = _fused_forward(layer, (_qkv, _out_mlp, _out_mlp))(
            x, position_ids=pos, position_embeddings=cos_sin
        )
    return float((got.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-12))


def unfusable(body: nn.Module, layers: nn.ModuleList, device: torch.device | str = "cpu") -> str | None:
    """Why `fuse_layers` cannot serve these layers on `device`, or None: weights partitioned by
    ZeRO-3, a layer not of the Llama form (module docstring), layer 0 disagreeing with the fused math on
    a probe, or no C++ compiler for the CPU graphs."""
    if any(is_partitioned(p) for p in body.parameters()):
        return "DeepSpeed ZeRO-3 partitions the weights, which the fused layer reads directly"
    if not hasattr(body, "rotary_emb"):
        return f"{type(body).__name__} has no rotary_emb"
    for layer in layers:
        why = _check_form(layer)
        if why:
            return f"{type(layer).__name__} is not of the Llama form ({why})"
    err = _probe(body, layers[0])
    tol = 1e-4 if next(body.parameters()).dtype == torch.float32 else 2e-2
    if not err <= tol:
        return (f"{type(layers[0]).__name__} computes something else than the Llama form "
                f"(relative difference {err:.2e} on a probe)")  # fmt: skip
    if torch.device(device).type == "cpu" and not any(
        shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "clang++")
    ):
        return "no C++ compiler (g++ or clang++) for torch.compile's CPU code"
    return None


def fuse_layers(
    body: nn.Module, layers: nn.ModuleList, recompute_out: bool = False, math_attention_max_keys: int = 0
) -> int:
    """Give every layer of `layers` (the decoder `body`'s) the two shared compiled graphs as its forward
    (with `recompute_out` and `math_attention_max_keys`, see `_fused_forward`); returns the number of
    layers. Check `unfusable` first."""
    import torch._dynamo.config as dyn  # deferred: loads the compiler stack

    # A process shares the two functions between every LM it loads: each (dtype, head layout, grad mode)
    # needs its own graphs, a static and a dynamic one. torch stops at 8 per function, and with
    # fullgraph=True the 9th is an error (the test suite, which loads many tiny LMs in one process,
    # reached it).
    dyn.recompile_limit = max(dyn.recompile_limit, _RECOMPILE_LIMIT)
    dyn.accumulated_recompile_limit = max(dyn.accumulated_recompile_limit, 4 * _RECOMPILE_LIMIT)
    run = _compiled()
    for layer in layers:
        layer.forward = _fused_forward(layer, run, recompute_out, math_attention_max_keys)
    return len(layers)
