"""Speed and memory levers applied to the decoder layers of a loaded LM, in place: activation
checkpointing (`checkpoint_layers`) and regional `torch.compile` (`compile_decoder`). Both keep the
outputs and gradients of the plain path (tests/models/test_llm.py).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from dist_srec.errors import ConfigError
from dist_srec.models.lm_config import COMPILE_SCOPES


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


# Graphs per layer under scope `layers`. A training step plus catalog encoding needs more than 4: the
# two prompt heads differ in length (the cache shape is guarded), with and without a graph, plus dynamic
# recompiles. At 4 the SmolLM2 whole step hit the limit (120) on its first step. 8 is not yet verified.
_PASS_KINDS = 8


def compile_decoder(body: nn.Module, scope: str) -> int:
    """`torch.compile` the decoder layers of `body` in place (see `LLMConfig.compile_scope`); returns
    the number of modules compiled.

    `layers`: each layer whole. Its graph guards on the layer's own KV-cache slot, so every layer needs
    its own cache entries; `recompile_limit` (default 8, process-wide) is raised to layers x pass kinds,
    otherwise layers past the limit fall back to eager without an error.
    `parts`: each layer's `mlp`, `input_layernorm` and `post_attention_layernorm` where present; their
    forwards touch no cache and no layer index, so all layers share one graph per shape.
    """
    layers = decoder_layers(body)
    if scope == "layers":
        import torch._dynamo.config as dyn  # deferred: loads the compiler stack, only for compile_layers

        need = _PASS_KINDS * len(layers)
        dyn.recompile_limit = max(dyn.recompile_limit, need)
        dyn.accumulated_recompile_limit = max(dyn.accumulated_recompile_limit, 2 * need)
        for layer in layers:
            layer.compile()
        return len(layers)
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
