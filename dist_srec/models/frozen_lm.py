"""The frozen language model: `load_frozen_lm(LLMConfig(...))` and the `FrozenLM` it returns.

- the special tokens (`dist_srec.models.special_tokens`) are added and the embedding table resized;
  the new rows are set to the mean of the old ones, deterministically (their content is never read:
  the splice replaces those positions, and right padding keeps pad positions out of every real
  token's causal window);
- every LM weight is frozen explicitly (`eval()`, `requires_grad_(False)`);
- `hidden()` runs only the decoder body (`model.get_decoder()`), never the vocabulary projection.

Under DeepSpeed ZeRO-3 (`dist_srec.parallel.lm_engine`) the weights are partitioned over ranks: the
splice's embedding table is gathered once and kept, `content_hash` gathers one tensor at a time (and
equals the unpartitioned hash), and `forwards_to_match` / `idle_forwards` keep every rank's number of
LM forwards equal, since each forward all-gathers every layer.
"""

from __future__ import annotations

import hashlib
import json
import logging

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dist_srec.models.lm_config import LLMConfig, resolve_dtype
from dist_srec.models.lm_levers import checkpoint_layers, compile_decoder
from dist_srec.models.lm_sources import load_causal_lm, resolve_llm_path
from dist_srec.models.special_tokens import (
    HISTORY_EMB,
    ITEM_OUT,
    SPECIAL_TOKENS,
    USER_OUT,
    add_special_tokens,
)
from dist_srec.models.zero3 import gathered, is_partitioned, rows

log = logging.getLogger(__name__)


PrefixKV = tuple[tuple[Tensor, Tensor], ...]


# Config keys that vary with how or where a model was saved, not with what it computes.
_VOLATILE_CONFIG_KEYS = (
    "_name_or_path",
    "_model_name_or_path",
    "transformers_version",
    "dtype",
    "torch_dtype",
)


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
        """The frozen token embedding table as the model's own input-embedding module computes it, [V, H]:
        row v = `model.get_input_embeddings()(v)`.

        For a plain `nn.Embedding` that is its weight, used as is. Some architectures transform inside
        the module (Gemma scales by sqrt(H)); their table is computed once through the module, so the
        splice feeds the LM what its own forward would. Under ZeRO-3 the parameter holds only this
        rank's partition, so the table is all-gathered once and kept whole (it is frozen, and the
        splice reads it every pass: V x H per rank, e.g. 0.8 GB for Llama-3.2-3B in bf16, against one
        all-gather of that size per pass otherwise).
        """
        module = self.model.get_input_embeddings()
        w = module.weight
        plain = type(module) is nn.Embedding
        if plain and not is_partitioned(w):
            return w
        if self._table is None:
            with gathered([w]), torch.no_grad():
                self._table = w.detach().clone() if plain else _through_module(module, rows(w), w.device)
        return self._table

    @property
    def partitioned(self) -> bool:
        """True when DeepSpeed ZeRO-3 partitions the weights over ranks (`dist_srec.parallel.lm_engine`)."""
        return is_partitioned(self.model.get_input_embeddings().weight)

    def forwards_to_match(self, n: int) -> int:
        """How many idle forwards this rank must add to its `n` so every rank runs as many LM forwards.

        Under ZeRO-3 each forward (and its backward) all-gathers every layer, a collective: ranks whose
        batches fall into different numbers of length buckets would hang. 0 unless partitioned over
        several ranks; otherwise one all_reduce(max) of the count.
        """

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
        return _cached_kv(out)

    def extend_kv(self, prefix: PrefixKV | None, inputs_embeds: Tensor) -> PrefixKV:
        """Per layer (keys, values) [B, kv_heads, p + t, head_dim] of [prefix tokens, inputs_embeds
        [B, t, H]], without a graph: for leading positions that nothing trainable reaches (callers
        pass embeddings of constant tokens). `prefix` None: the rows start at position 0."""
        with torch.no_grad():
            cache = None if prefix is None else _cache_of(prefix, inputs_embeds.shape[0])
            out = self.body(inputs_embeds=inputs_embeds, past_key_values=cache, use_cache=True)
        return _cached_kv(out)

    def hidden_after(self, prefix: PrefixKV, inputs_embeds: Tensor) -> Tensor:
        """`hidden` of [prefix tokens, inputs_embeds] for the positions after the prefix: [B, T, H].

        The prefix's keys and values are computed once (`prefix_kv`: [1, ...], shared by the batch) or
        per row (`extend_kv`: [B, ...]); the positions continue after it. Equal to slicing `hidden` of
        the whole sequence (to rounding).
        """
        cache = _cache_of(prefix, inputs_embeds.shape[0])
        out = self.body(inputs_embeds=inputs_embeds, past_key_values=cache, use_cache=True)
        return out.last_hidden_state

    def content_hash(self) -> str:
        """A stable sha256 of what the LM computes: config, tokenizer specials, and a strided sample of
        every weight tensor (rounded to bf16, so loading in fp32 or bf16 gives the same hash)."""
        if self._hash is None:
            self._hash = _content_hash(self.model, self.tokenizer)
        return self._hash


def _cache_of(prefix: PrefixKV, b: int):
    """A transformers DynamicCache holding `prefix` for b rows (a [1, ...] prefix is broadcast, not
    copied; the forward appends to new tensors, so `prefix` itself is never changed)."""
    from transformers import DynamicCache  # deferred: transformers takes seconds to import

    return DynamicCache(
        ddp_cache_data=[(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in prefix]
    )


def _cached_kv(out) -> PrefixKV:
    """Per layer (keys, values) of a forward's cache (`use_cache=True`)."""
    return tuple((layer.keys, layer.values) for layer in out.past_key_values.layers)


def _through_module(module: nn.Module, vocab: int, device: torch.device, chunk: int = 8192) -> Tensor:
    """[V, H]: every token id through an embedding module, `chunk` ids at a time."""
    return torch.cat([module(torch.arange(lo, min(lo + chunk, vocab), device=device)).detach()
                      for lo in range(0, vocab, chunk)])  # fmt: skip


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


def load_frozen_lm(cfg: LLMConfig, device: torch.device | str = "cpu") -> FrozenLM:
    """Load the LM named by `cfg` and return it frozen, with the special tokens added.

    Raises ConfigError if the path does not exist or holds no causal LM.
    """
    path = resolve_llm_path(cfg)
    model, tokenizer = load_causal_lm(path, cfg, resolve_dtype(cfg.dtype, device))
    add_special_tokens(model, tokenizer)
    lm = FrozenLM(model, tokenizer, source=cfg.path)
    recompute_out = cfg.selective_checkpointing and not cfg.activation_checkpointing
    if cfg.selective_checkpointing and not recompute_out:
        log.info("selective_checkpointing has no effect: activation_checkpointing recomputes whole layers")
    if cfg.compile_layers:  # first: checkpointing wraps whatever forward a layer then has
        compile_decoder(lm.body, cfg.compile_scope, device, recompute_out, cfg.math_attention_max_keys)
    elif cfg.selective_checkpointing:
        log.info("selective_checkpointing has no effect: it needs the fused layers (compile_layers false)")
    if cfg.activation_checkpointing:
        checkpoint_layers(lm.body)
    if any(is_partitioned(p) for p in model.parameters()):
        return lm  # ZeRO-3 (`dist_srec.parallel.lm_engine`): DeepSpeed placed each partition already
    return lm.to(device)
