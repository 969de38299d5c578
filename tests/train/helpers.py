"""Shared set-up of the pipeline tests (train, serve, dist): a prepared synthetic catalog, a tiny
trained teacher, and a tiny-LM LLM-SRec run config and checkpoint."""

from __future__ import annotations

from pathlib import Path

from dist_srec.config import PrepareConfig
from dist_srec.data.prepare import prepare
from dist_srec.models.llmsrec import LLMSRecConfig
from dist_srec.models.lm_config import LLMConfig
from dist_srec.train.loop_types import LoopConfig
from dist_srec.train.srec_train import SRecRunConfig, train_srec
from dist_srec.train.teacher import TeacherTrainConfig, pretrain_teacher, teacher_loop
from tests.data.synth import write_custom


def prepared_catalog(
    root: Path, users: int = 40, items: int = 60, per_user: tuple[int, int] = (6, 14), seed: int = 0
) -> Path:
    """A synthetic custom catalog under ROOT/raw, prepared into ROOT/data (returned)."""
    inter, meta = write_custom(root / "raw", users=users, items=items, per_user=per_user, seed=seed)
    out = root / "data"
    cfg = PrepareConfig(
        dataset="custom", out=str(out), interactions=str(inter), items=str(meta), progress=False
    )
    prepare(cfg)
    return out


def tiny_teacher(data: Path, out: Path, negatives: int = 20) -> Path:
    """A hidden-16 SASRec trained one epoch on DATA; returns OUT/best."""
    cfg = TeacherTrainConfig(loop=teacher_loop(epochs=1, eval_every_epochs=1, progress=False), eval_negatives=negatives,
                             batch_size=16)  # fmt: skip
    pretrain_teacher(data, out, model={"hidden": 16, "max_len": 20}, cfg=cfg)
    return out / "best"


def tiny_srec_config(data: Path, teacher: Path, out: Path, **loop) -> SRecRunConfig:
    """LLM-SRec on the tiny random LM (fp32), 4 users a step; LOOP overrides LoopConfig fields."""
    loop = {"epochs": 3, "lr": 1e-3, "progress": False, "eval_every_steps": 3, **loop}
    return SRecRunConfig(
        data=str(data), teacher=str(teacher), out=str(out), llm=LLMConfig(path="tiny", dtype="float32"),
        model=LLMSRecConfig(head_hidden=32), loop=LoopConfig(**loop), batch_size=4, eval_users=10,
        eval_negatives=20,
    )  # fmt: skip


def train_tiny(data: Path, teacher: Path, out: Path) -> Path:
    """One step of LLM-SRec on the tiny random LM, validated once; returns OUT/best."""
    train_srec(tiny_srec_config(data, teacher, out, max_steps=1, eval_every_steps=1))
    return out / "best"
