"""Shared by the serving tests (here and in tests/dist): a tiny trained LLM-SRec checkpoint."""

from __future__ import annotations

from pathlib import Path

from dist_srec.train.srec_run import train_srec
from tests.train.test_srec_pipeline import _cfg


def train_tiny(data: Path, teacher: Path, out: Path) -> Path:
    """One step of LLM-SRec on the tiny random LM (fp32), validated once; returns OUT/best."""
    train_srec(_cfg(data, teacher, out, max_steps=1, eval_every_steps=1))
    return out / "best"
