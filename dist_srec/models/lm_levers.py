"""Speed and memory levers applied to the decoder layers of a loaded LM, in place: activation
checkpointing (`checkpoint_layers`) and regional `torch.compile` (`compile_decoder`). Both keep the
outputs and gradients of the plain path (tests/models/test_llm.py).
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from dist_srec.errors import ConfigError
from dist_srec.models.fused_layer import fuse_layers, unfusable
from dist_srec.models.lm_config import COMPILE_SCOPES

log = logging.getLogger(__name__)


def checkpoint_layers(body: nn.Module) -> int:
    """Make each decoder layer of `body` recompute its activations in the backward (non-reentrant
    `torch.utils.checkpoint`), when a graph is being built; returns the number of layers wrapped.

    The layer's own `forward` is wrapped, so the modules inside it run through their `__call__` on the
    recomputation too, and hooks on them (DeepSpeed ZeRO-3's parameter gathers) fire again there.
    """

    layers = decoder_layers(body)
    for i, layer in enumerate(layers):
        layer.forward = _checkpointed(
            layer.forward, getattr(getattr(layer, "self_attn", None), "layer_idx", i)
        )
    return len(layers)


def compile_decoder(
    body: nn.Module,
    scope: str,
    device: torch.device | str = "cpu",
    recompute_out: bool = False,
    math_attention_max_keys: int = 0,
) -> int:
    """`torch.compile` the decoder layers of `body` in place (see `LLMConfig.compile_scope`) for a model
    that runs on `device`; returns the number of layers (`auto`, `layers`) or modules (`parts`) compiled.

    `layers`: every layer runs as two compiled graphs that all layers share, one before the attention
    and one after it (`dist_srec.models.fused_layer`); ConfigError where that cannot serve (not the
    Llama form, ZeRO-3, no C++ compiler for CPU code). `auto`: the same, and where it cannot serve, the
    layers stay eager and the reason is logged (0 returned). `recompute_out`: the fused layers recompute
    their part after the attention in the backward (`LLMConfig.selective_checkpointing`);
    `math_attention_max_keys`: see `LLMConfig` (fused layers only).
    `parts`: each layer's `mlp`, `input_layernorm` and `post_attention_layernorm` where present; their
    forwards touch no cache and no layer index, so all layers share one graph per shape.
    """
    layers = decoder_layers(body)
    if scope in ("auto", "layers"):
        why = unfusable(body, layers, device)
        if why is None:
            n = fuse_layers(body, layers, recompute_out, math_attention_max_keys)
            log.info("compiled decoder layers: %d layers share the fused graphs", n)
            return n
        if scope == "layers":
            raise ConfigError(f"compile_scope 'layers': {why}; use 'parts' or compile_layers false")
        log.info("compile_scope auto: decoder layers left eager: %s", why)
        if recompute_out:
            log.info("selective_checkpointing has no effect: it needs the fused layers (%s)", why)
        return 0
    if recompute_out:
        log.info("selective_checkpointing has no effect: it needs the fused layers (compile_scope %s)", scope)
    if scope != "parts":
        raise ConfigError(f"compile scope '{scope}' is not one of {', '.join(COMPILE_SCOPES)}")
    n = 0
    for layer in layers:
        for name in ("mlp", "input_layernorm", "post_attention_layernorm"):
            part = getattr(layer, name, None)
            if isinstance(part, nn.Module):
                part.compile()
                n += 1
    if n == 0:
        raise ConfigError(f"compile scope 'parts': {type(layers[0]).__name__} has no mlp / norm submodules")
    return n


def decoder_layers(body: nn.Module) -> nn.ModuleList:
    layers = getattr(body, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ConfigError(
            f"activation_checkpointing / compile_layers need a decoder body with a `layers` ModuleList; "
            f"{type(body).__name__} has none"
        )
    return layers


def _checkpointed(inner, layer_idx: int):
    """`inner` (a decoder layer's forward) under non-reentrant checkpointing. A key/value cache passed
    in (the cached constant prompt head, `FrozenLM.hidden_after`) is appended to by the forward; the
    recomputation starts from the same cache state, not from the already appended one."""

    def forward(*args, **kwargs):
        if not torch.is_grad_enabled():
            return inner(*args, **kwargs)
        cache = kwargs.get("past_key_values")
        if cache is None:
            return checkpoint(inner, *args, use_reentrant=False, **kwargs)
        entry = cache.layers[layer_idx]
        before = (entry.keys, entry.values)

        def run(*a, **k):
            entry.keys, entry.values = before
            return inner(*a, **k)

        return checkpoint(run, *args, use_reentrant=False, **kwargs)

    return forward
