"""Which frozen LM to load and how to run it (`LLMConfig`), and the dtype rule of `--dtype auto`."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from dist_srec import storage
from dist_srec.errors import ConfigError

log = logging.getLogger(__name__)


DTypeName = Literal["auto", "bfloat16", "float16", "float32"]


DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


COMPILE_SCOPES = ("auto", "layers", "parts")


@dataclass(kw_only=True)
class LLMConfig:
    """Which frozen LM to load and how to run it."""

    path: str = "smollm2"
    """A local Hugging Face model directory, a Hugging Face Hub id (`org/name`; offline with
    `HF_HUB_OFFLINE=1`, from the Hub cache), or `smollm2` (embedded GGUF) or `tiny` (random, debug)."""
    revision: str | None = None
    """With a Hub id: the branch, tag or commit to load (None: the default branch)."""
    dtype: DTypeName = "auto"
    """Weights and activations dtype. `auto`: bf16 where the GPU or CPU supports it, fp32 otherwise."""
    attn_implementation: str = "sdpa"
    """Passed to transformers (`sdpa`, `eager`, `flash_attention_2`, ...)."""
    trust_remote_code: bool = False
    num_layers: int | None = None
    """Keep only the first k decoder layers (fast real-weight tests and debug runs); None keeps all."""
    cache_dir: str | None = None
    """Where converted copies live; default `$DIST_SREC_CACHE` or `~/.cache/dist-srec`."""
    activation_checkpointing: bool = False
    """Keep only each decoder layer's input for the backward and recompute the layer inside it: the
    activations a training step holds drop from every layer's intermediates to one [b, T, H] per layer,
    for about one more forward of compute. For when memory binds (two ranks per machine, long prompts,
    a big LM on a small GPU); same outputs and gradients either way."""
    selective_checkpointing: bool = True
    """Recompute in the backward what the MLP's input gradient reads (o projection, residual, RMSNorm,
    gate and up projections; not the down projection) instead of keeping it from the forward: about
    2/3 of a layer's activations. A SmolLM2 train step on a CPU (bf16, 2 cores) peaked at 2.5 GB instead
    of 4.0-4.3 and took 7-17% longer, typically 10-11% (benchmarks/results/NOTES.md, four
    interleaved runs). Applies where the fused layers run
    (`compile_layers` with `compile_scope` `auto` or `layers`); elsewhere, and under
    `activation_checkpointing` (which recomputes the whole layer), it has no effect and the log says so.
    Off: the fastest step, for when memory is plentiful."""
    math_attention_max_keys: int = 128
    """On a CPU, a pass with grad whose attention spans at most this many keys (the cached prompt head
    included) runs as two batched GEMMs and an fp32 softmax (`fused_layer.math_attention`, what
    transformers' eager attention computes) instead of SDPA's CPU flash kernel, whose backward has a
    large fixed cost per call. Item prompts (80 x 32 tokens, bf16, one thread): 13 ms a layer forward and
    backward against 57 for flash; at 128 keys the two are even for 80 prompts, and at 352 (user prompts)
    flash is 3x faster (benchmarks/results/attention_cpu_amx_short.md, attention_cpu_amx_flex.md). Only
    with `attn_implementation` `sdpa` and the fused layers (`compile_layers`, scope `auto` / `layers`);
    GPUs and passes without grad keep SDPA. 0 turns it off. Same outputs and gradients to rounding."""
    compile_layers: bool = True
    """`torch.compile` the elementwise work around the GEMMs of every decoder layer (regional
    compilation): what is compiled is `compile_scope`. Costs compile time on the first passes (tens of
    seconds on a CPU), then faster steps: the `eager` row of benchmarks/results/vs_reference_ml-100k.md
    prices it in a SmolLM2 train step. Same outputs and gradients to rounding."""
    compile_scope: str = "auto"
    """With `compile_layers`: `layers` runs every decoder layer as two compiled graphs shared by all
    layers, one before and one after the attention (norm, q/k/v, rotary; o projection, residuals, norm,
    SiLU-gated MLP), for layers of the Llama form (Llama, SmolLM2, Mistral, Qwen2); an error elsewhere,
    under ZeRO-3 partitioning, or on a CPU without a C++ compiler. `auto` (default): `layers` where it
    applies, else the layers stay eager and the log says why. `parts` compiles only the MLP and the two
    RMSNorm modules of each layer (any architecture that has them): seconds of compile, fewer fusions."""

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("config field 'path': an LLM path or 'smollm2' / 'tiny' is required")
        if self.dtype not in ("auto", *DTYPES):
            raise ConfigError(f"config field 'dtype': '{self.dtype}' is not one of auto, {', '.join(DTYPES)}")
        if self.num_layers is not None and self.num_layers < 1:
            raise ConfigError(f"config field 'num_layers': must be >= 1, got {self.num_layers}")
        if self.math_attention_max_keys < 0:
            raise ConfigError(
                f"config field 'math_attention_max_keys': must be >= 0 (0 = off), got {self.math_attention_max_keys}"
            )
        if self.compile_scope not in COMPILE_SCOPES:
            raise ConfigError(
                f"config field 'compile_scope': '{self.compile_scope}' is not one of {', '.join(COMPILE_SCOPES)}"
            )


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache directory: the argument, else `$DIST_SREC_CACHE`, else `~/.cache/dist-srec`."""
    return Path(cache_dir) if cache_dir is not None else storage.cache_root()


def cpu_has_native_bf16() -> bool:
    """True if the CPU computes bf16 matmuls natively (avx512_bf16 or amx_bf16).

    oneDNN's `_is_mkldnn_bf16_supported()` is not enough: it is also True on plain AVX-512, where bf16
    is emulated. Measured on such a Xeon (2 cores): 29 GFLOP/s bf16 against 139 fp32, so `auto` must
    pick fp32 there, while an AMD CPU with avx512_bf16 ran bf16 at ~950 against ~210.
    """
    try:
        flags = next(
            (line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("flags")),
            [],
        )  # fmt: skip
    except OSError:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: DTypeName, device: torch.device | str = "cpu") -> torch.dtype:
    """The torch dtype for `name`; `auto` picks bf16 where the hardware runs it natively, else fp32."""
    if name != "auto":
        return DTYPES[name]
    device = torch.device(device)
    if device.type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        why = "CUDA device supports bf16" if ok else "CUDA device lacks bf16"
    else:
        ok = cpu_has_native_bf16()
        why = "CPU has native bf16 (avx512_bf16/amx_bf16)" if ok else "CPU lacks native bf16"
    log.info("LLM dtype auto -> %s (%s)", "bfloat16" if ok else "float32", why)
    return torch.bfloat16 if ok else torch.float32
