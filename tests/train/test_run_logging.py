"""A run's logs and metrics: one line per N steps off a terminal, JSONL and TensorBoard files that
parse, metrics of validation rounds, `--version`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dist_srec import __version__
from dist_srec.cli.main import main
from dist_srec.train.metric_logging import METRICS_FILE, TENSORBOARD_DIR
from tests.train.helpers import prepared_catalog


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(stdout file, run dir) of `dist-srec pretrain-teacher` run as a subprocess with stdout and
    stderr redirected to a file, as a Ray job or a pod runs it."""
    root = tmp_path_factory.mktemp("logged")
    data = prepared_catalog(root, users=40, items=50)
    run, log = root / "run", root / "stdout.txt"
    argv = [sys.executable, "-m", "dist_srec", "pretrain-teacher", "--data", str(data), "--out", str(run),
            "--train.loop.epochs", "3", "--train.loop.eval_every_epochs", "1", "--train.loop.log_every_steps", "2",
            "--train.batch_size", "8", "--model.hidden", "8", "--model.max_len", "10", "--train.eval_negatives", "10",
            "--final_eval", "false"]  # fmt: skip
    with log.open("w") as f:
        subprocess.run(
            argv, stdout=f, stderr=subprocess.STDOUT, check=True, env={**os.environ, "COLUMNS": "80"}
        )
    return log, run


def test_non_tty_run_logs_one_line_per_n_steps(teacher_run: tuple[Path, Path]) -> None:
    log, run = teacher_run
    text = log.read_text()
    assert "\r" not in text, "no progress-bar redraws in a log file"
    lines = [line for line in text.splitlines() if line.startswith("[teacher] step=")]
    steps = [int(line.split("step=")[1].split("/")[0]) for line in lines]
    total = json.loads((run / "last" / "train_state.json").read_text())["train_state"]["global_step"]
    assert steps == list(range(2, total + 1, 2)) and total >= 6
    for field in ("epoch=", "loss=", "samples/s=", "lr=", "mem=", "eta="):
        assert all(field in line for line in lines), field


def test_metrics_jsonl_and_tensorboard_events_parse(teacher_run: tuple[Path, Path]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run = teacher_run
    rows = [json.loads(x) for x in (run / METRICS_FILE).read_text().splitlines()]
    train = [r for r in rows if "train_loss" in r]
    valid = [r for r in rows if "valid_ndcg@10" in r]
    assert train and len(valid) == 3 and all(0 <= r["valid_ndcg@10"] <= 1 for r in valid)
    acc = EventAccumulator(str(run / TENSORBOARD_DIR))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train_loss", "valid_ndcg@10", "samples_per_s", "lr"} <= set(tags)
    losses = acc.Scalars("train_loss")
    assert [e.step for e in losses] == [r["step"] for r in train]
    assert [e.value for e in losses] == pytest.approx([r["train_loss"] for r in train], rel=1e-6)


def test_version_flag(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"dist-srec {__version__}"
