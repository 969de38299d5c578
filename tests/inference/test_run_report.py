"""`dist-srec report`: the table of runs with their config differences, and the PNG curves."""

from __future__ import annotations

from pathlib import Path

import pytest

from dist_srec.cli.main import main
from dist_srec.errors import DataError
from dist_srec.inference.run_report import load_run
from tests.train.helpers import prepared_catalog


def _teacher(data: Path, out: Path, lr: str) -> None:
    argv = ["pretrain-teacher", "--data", data, "--out", out, "--train.loop.epochs", "2",
            "--train.loop.eval_every_epochs", "1", "--train.loop.log_every_steps", "1", "--train.batch_size", "8",
            "--model.hidden", "8", "--model.max_len", "10", "--train.loop.lr", lr, "--train.eval_negatives", "10",
            "--train.loop.progress", "false"]  # fmt: skip
    assert main([str(a) for a in argv]) == 0


def test_report_tables_two_runs_and_draws_their_curves(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = prepared_catalog(tmp_path, users=30, items=40)
    _teacher(data, tmp_path / "a", "1e-3")
    _teacher(data, tmp_path / "b", "5e-3")
    capsys.readouterr()
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "rep")]) == 0
    text = capsys.readouterr().out
    assert "| a | teacher |" in text and "| b | teacher |" in text and "test_sampled_ndcg@10" in text
    assert "| `train.loop.lr` | `0.001` | `0.005` |" in text, "the config field in which the runs differ"
    assert (tmp_path / "rep" / "report.md").read_text().strip() == text.split("\nwrote ")[0].strip()
    for name in ("loss.png", "valid.png"):
        f = tmp_path / "rep" / name
        assert f.is_file() and f.stat().st_size > 5000
    assert (tmp_path / "rep" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rec = load_run(tmp_path / "a")
    assert len(rec.history) == 2 and {"train_loss", "valid_ndcg@10"} <= {k for r in rec.metrics for k in r}


def test_report_of_a_folder_that_is_no_run_names_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"not a training run \(no last/train_state.json\) \(file "):
        load_run(tmp_path)
