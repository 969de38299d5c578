"""Composing LLM-SRec from its parts: the frozen LM (plain or placed by DeepSpeed), the frozen teacher
checked against the catalog, and the trainable heads; plus the identity parts its checkpoints record.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from dist_srec.data.catalog import Catalog
from dist_srec.models.frozen_lm import load_frozen_lm
from dist_srec.models.llmsrec import LLMSRec, LLMSRecConfig
from dist_srec.models.lm_config import LLMConfig
from dist_srec.parallel.deepspeed_config import DeepSpeedConfig
from dist_srec.parallel.lm_engine import composing, load_lm_deepspeed
from dist_srec.train import checkpoint as ckpt_io
from dist_srec.train.teacher import load_teacher


def build_model(
    llm_cfg: LLMConfig,
    teacher_path: str | Path,
    cat: Catalog,
    model_cfg: LLMSRecConfig,
    device: torch.device,
    *,
    deepspeed: DeepSpeedConfig | None = None,
    micro_batch: int = 1,
) -> tuple[LLMSRec, dict[str, Any]]:
    """Load the frozen LM and teacher and compose LLM-SRec; returns it with its identity parts.

    With `deepspeed`, every rank must call this (the LM is placed collectively, see
    `dist_srec.parallel.lm_engine`); `micro_batch` is the per-rank batch DeepSpeed's config records.
    """
    teacher, _ = load_teacher(teacher_path, catalog=cat.identity())
    compose: Any = contextlib.nullcontext()
    if deepspeed is None:
        lm = load_frozen_lm(llm_cfg, device)
    else:
        lm = load_lm_deepspeed(llm_cfg, deepspeed, device, micro_batch=micro_batch)
        compose = composing(lm, deepspeed)
    with torch.random.fork_rng(), compose:
        torch.manual_seed(model_cfg.seed)  # the same initial heads on every rank and every run
        model = LLMSRec(lm, teacher.to(device), [None, *cat.titles[1:]], model_cfg)
    parts = {
        "llm_cfg": llm_cfg,
        "lm_hash": lm.content_hash(),
        "teacher_path": teacher_path,
        "teacher_sha256": ckpt_io.model_sha256(teacher_path),
        "catalog": cat.identity(),
        "model_cfg": model_cfg,
    }
    return model, parts
