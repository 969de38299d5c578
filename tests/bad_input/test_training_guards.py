"""Non-finite losses, gradients and validation scores stop training at once; nothing non-finite is
saved; the per-epoch loss survives a mid-epoch resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from dist_srec.errors import TrainingError
from dist_srec.train.checkpoint import load_checkpoint
from dist_srec.train.teacher import TeacherTask, train_teacher
from tests.bad_input.conftest import one_error_line, run_cli
from tests.train.test_teacher import ListLoader, _cfg, _model, _next_item_accuracy, cyclic_samples


def _poison(monkeypatch: pytest.MonkeyPatch, at_call: int, kind: str) -> None:
    """Make `TeacherTask.loss` return a NaN loss, or a finite loss with a NaN gradient, at call `at_call`."""
    real, calls = TeacherTask.loss, []

    def loss(self, batch, gen):
        calls.append(1)
        value, logs = real(self, batch, gen)
        if len(calls) == at_call:
            w = self.model.item_emb.weight
            value = value * float("nan") if kind == "loss" else value + torch.sqrt((w * 0).sum())
        return value, logs

    monkeypatch.setattr(TeacherTask, "loss", loss)


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_non_finite_step_stops_before_the_optimizer_step(monkeypatch, tmp_path: Path, kind: str) -> None:
    _poison(monkeypatch, at_call=5, kind=kind)
    with pytest.raises(TrainingError, match=rf"non-finite {kind} at step 5 \(epoch 1, lr 0.001;"):
        train_teacher(_model(), ListLoader(cyclic_samples()), _next_item_accuracy, cfg=_cfg(epochs=3,
                      save_every_steps=2), out_dir=tmp_path)  # fmt: skip
    last = load_checkpoint(tmp_path / "last")  # finite, or loading would raise
    assert last.train_state["global_step"] == 4 and not (tmp_path / "best").exists()


def test_nan_validation_score_never_becomes_best(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"validation ndcg@10 is nan at step 6"):
        train_teacher(_model(), ListLoader(cyclic_samples()), lambda m: {"ndcg@10": math.nan},
                      cfg=_cfg(epochs=2, eval_every_epochs=1), out_dir=tmp_path)  # fmt: skip
    assert not (tmp_path / "best").exists()


def test_infinite_learning_rate_is_refused_at_once(tmp_path: Path, capsys) -> None:
    argv = ["pretrain-teacher", "--data", tmp_path / "d", "--out", tmp_path / "run", "--train.loop.lr", "inf"]
    code, err = run_cli(argv, capsys)
    assert (
        code == 2
        and "Parser key \"train.loop.lr\": Expected a <class 'float'>. Got value: inf" in one_error_line(err)
    )
    assert not (tmp_path / "run").exists()


def test_epoch_loss_after_a_mid_epoch_resume_counts_the_whole_epoch(tmp_path: Path) -> None:
    full = train_teacher(_model(), ListLoader(cyclic_samples()), _next_item_accuracy,
                         cfg=_cfg(epochs=1, eval_every_epochs=1), out_dir=tmp_path / "a")  # fmt: skip
    train_teacher(_model(), ListLoader(cyclic_samples()), _next_item_accuracy,
                  cfg=_cfg(epochs=1, eval_every_epochs=1, max_steps=2), out_dir=tmp_path / "b")  # fmt: skip
    resumed = train_teacher(_model(), ListLoader(cyclic_samples()), _next_item_accuracy,
                            cfg=_cfg(epochs=1, eval_every_epochs=1), out_dir=tmp_path / "b")  # fmt: skip
    assert resumed.global_step == full.global_step == 6
    assert resumed.history[-1]["train_loss"] == pytest.approx(full.history[-1]["train_loss"], rel=1e-12)
