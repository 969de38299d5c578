"""The teacher on a prepared data directory: CLI train + evaluate, result file, catalog mismatch."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from dist_srec.cli.teacher import add_teacher_commands
from dist_srec.errors import CheckpointError
from dist_srec.inference.evaluate import evaluate_teacher
from tests.train.helpers import prepared_catalog

SIZE = {"users": 50, "per_user": (10, 25)}


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_teacher_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_pretrain_and_evaluate_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = prepared_catalog(tmp_path, **SIZE)
    run = tmp_path / "run"
    argv = ["pretrain-teacher", "--data", str(data), "--out", str(run), "--epochs", "2", "--eval-every-epochs", "1",
            "--hidden", "16", "--max-len", "20", "--batch-size", "16", "--eval-negatives", "20", "--no-progress"]  # fmt: skip
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
          "--split", "valid", "--num-negatives", "20", "--out", str(out)]  # fmt: skip
    assert _cli(ev) == 0
    assert "valid sampled" in capsys.readouterr().out
    assert json.loads(out.read_text())[0]["protocol"]["split"] == "valid"


def test_checkpoint_from_another_catalog_is_refused(tmp_path: Path) -> None:
    data = prepared_catalog(tmp_path / "a", **SIZE)
    other = prepared_catalog(tmp_path / "b", **{**SIZE, "items": 45, "seed": 1})
    run = tmp_path / "run"
    argv = ["pretrain-teacher", "--data", str(data), "--out", str(run), "--epochs", "1", "--hidden", "8",
            "--max-len", "10", "--eval-negatives", "10", "--no-progress", "--no-final-eval"]  # fmt: skip
    assert _cli(argv) == 0
    with pytest.raises(CheckpointError, match=r"catalog of \d+ items, but this catalog has"):
        evaluate_teacher(run / "best", other, num_negatives=10, progress=False)
