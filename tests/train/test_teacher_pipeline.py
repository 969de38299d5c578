"""The teacher on a prepared data directory: CLI train + evaluate, result file, catalog mismatch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dist_srec.cli.main import parse
from dist_srec.errors import CheckpointError, ConfigError
from dist_srec.inference.evaluate import evaluate_teacher
from tests.train.helpers import prepared_catalog

SIZE = {"users": 50, "per_user": (10, 25)}


def _cli(argv: list[str]) -> int:
    cmd, p, ns = parse(argv)
    return cmd.run(p, ns)


def test_pretrain_and_evaluate_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = prepared_catalog(tmp_path, **SIZE)
    run = tmp_path / "run"
    argv = ["pretrain-teacher", "--data", str(data), "--out", str(run), "--train.loop.epochs", "2",
            "--train.loop.eval_every_epochs", "1", "--model.hidden", "16", "--model.max_len", "20",
            "--train.batch_size", "16", "--train.eval_negatives", "20", "--train.loop.progress", "false"]  # fmt: skip
    assert _cli(argv) == 0
    assert (run / "best" / "model.safetensors").is_file() and (run / "last" / "train_state.json").is_file()
    records = json.loads((run / "results.json").read_text())
    assert [(r["protocol"]["protocol"], r["protocol"]["exclude_history"]) for r in records] == [
        ("sampled", False), ("full", False), ("full", True),
    ]  # fmt: skip
    manifest = json.loads((data / "manifest.json").read_text())
    for r in records:
        assert r["counts"]["evaluated_users"] == manifest["counts"]["num_users"]
        assert r["protocol"]["split"] == "test" and len(r["checkpoint"]["sha256"]) == 64
        assert len(r["data_manifest_sha256"]) == 64
        assert 0.0 <= r["metrics"]["ndcg@10"] <= r["metrics"]["hr@10"] <= 1.0
    # a second run resumes and, having finished its epochs, trains no further
    assert _cli(argv) == 0
    state = json.loads((run / "last" / "train_state.json").read_text())["train_state"]
    assert state["epoch"] == 2 and len(state["history"]) == 2
    out = tmp_path / "eval.json"
    ev = ["evaluate-teacher", "--ckpt", str(run / "best"), "--data", str(data), "--protocol", "sampled",
          "--split", "valid", "--eval_negatives", "20", "--results", str(out)]  # fmt: skip
    assert _cli(ev) == 0
    assert "valid sampled" in capsys.readouterr().out
    assert json.loads(out.read_text())[0]["protocol"]["split"] == "valid"
    # HSTU's protocol: only the last k history items masked; a window without masking is refused
    window = ["evaluate-teacher", "--ckpt", str(run / "best"), "--data", str(data), "--protocol", "full",
              "--exclude_history", "yes", "--exclude_last", "3", "--results", str(out)]  # fmt: skip
    assert _cli(window) == 0
    assert "full (last 3 history items excluded)" in capsys.readouterr().out
    assert json.loads(out.read_text())[0]["protocol"]["exclude_last"] == 3
    with pytest.raises(ConfigError, match="--exclude_last needs --exclude_history"):
        _cli([*window[:-4], "--exclude_history", "no", "--exclude_last", "3"])


def test_checkpoint_from_another_catalog_is_refused(tmp_path: Path) -> None:
    data = prepared_catalog(tmp_path / "a", **SIZE)
    other = prepared_catalog(tmp_path / "b", **{**SIZE, "items": 45, "seed": 1})
    run = tmp_path / "run"
    argv = ["pretrain-teacher", "--data", str(data), "--out", str(run), "--train.loop.epochs", "1",
            "--model.hidden", "8", "--model.max_len", "10", "--train.eval_negatives", "10",
            "--train.loop.progress", "false", "--final_eval", "false"]  # fmt: skip
    assert _cli(argv) == 0
    with pytest.raises(CheckpointError, match=r"catalog of \d+ items, but this catalog has"):
        evaluate_teacher(run / "best", other, num_negatives=10, progress=False)


def test_full_softmax_teacher_selects_on_full_ranking_from_the_cli(tmp_path: Path) -> None:
    data = prepared_catalog(tmp_path, **SIZE)
    run = tmp_path / "run"
    argv = ["pretrain-teacher", "--data", str(data), "--out", str(run), "--train.loop.epochs", "2",
            "--train.loop.eval_every_epochs", "1", "--model.hidden", "16", "--model.max_len", "20",
            "--train.batch_size", "16", "--train.loss", "softmax", "--train.eval_protocol", "full",
            "--train.loop.progress", "false", "--final_eval", "false"]  # fmt: skip
    assert _cli(argv) == 0
    state = json.loads((run / "last" / "train_state.json").read_text())["train_state"]
    out = tmp_path / "eval.json"
    ev = ["evaluate-teacher", "--ckpt", str(run / "best"), "--data", str(data), "--protocol", "full",
          "--split", "valid", "--results", str(out)]  # fmt: skip
    assert _cli(ev) == 0
    full_valid = json.loads(out.read_text())[0]["metrics"]["ndcg@10"]
    assert state["best_metric"] == pytest.approx(full_valid, abs=1e-6)  # selection was on the full protocol
