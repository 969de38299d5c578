"""A tiny random Llama with a real byte-level BPE tokenizer, built offline in milliseconds.

For tests and `--llm tiny` CPU debug runs: it exercises every code path of the real LM (byte-level
BPE pre-tokenisation like SmolLM2 / Llama-3, special tokens, sdpa, resize) but its weights are random,
so its outputs mean nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dist_srec.io import atomic_path

_CORPUS = """This user has made a series of purchases in the following order: Item No.1, Time: 2021-03-02,
"Toy Story (1995)"[HistoryEmb], Item No.2, Time: 1998-11-30, "Star Wars (1977)". Based on this sequence
of purchases, generate user representation token:[UserOut] The item title and item embedding are as
follows: "Heat (1995)", then generate item representation token:[ItemOut] the a of and in to is was
for on with as by at from that this it be are or an which movie film love story night day man woman
world life war city house king queen dark light blue red black white green gold silver big little
0123456789 0 1 2 3 4 5 6 7 8 9 10 11 12 19 20 2000 2001 1990 1999 ( ) , . : ; ! ? ' " - & / [ ]
"""


def build_tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer (GPT-2 pre-tokenisation, as SmolLM2) trained on a fixed corpus.

    Deterministic; every byte is in the alphabet, so any text tokenises (no unknown tokens).
    """
    from tokenizers import (  # deferred: only the tiny debug LM trains a tokenizer
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast  # deferred: transformers takes seconds to import

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines() * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|endoftext|>")


def build_tiny_lm(hidden_size: int = 64, num_layers: int = 2, seed: int = 0, vocab_size: int = 512):
    """(LlamaForCausalLM, tokenizer): a random Llama of `num_layers` layers and width `hidden_size`."""
    from transformers import LlamaConfig, LlamaForCausalLM  # deferred: transformers takes seconds to import

    tokenizer = build_tiny_tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model, tokenizer


def tiny_lm_dir(root: Path, hidden_size: int = 64, num_layers: int = 2, seed: int = 0) -> Path:
    """A saved tiny LM (safetensors + tokenizer) under `root`, built on first use."""
    out = Path(root) / f"tiny-llama-h{hidden_size}-l{num_layers}-s{seed}"
    if (out / "config.json").is_file():
        return out
    model, tokenizer = build_tiny_lm(hidden_size, num_layers, seed)
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out
