"""Run files: every training run writes its resolved config to OUT/config.yaml, `--config` replays it
(the same losses), dotted flags reach every field, and each subcommand's help shows defaults and examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dist_srec.cli.llmsrec import run_config
from dist_srec.cli.main import COMMANDS, main, parse
from dist_srec.config import load_run_file
from dist_srec.demo import CONFIGS
from dist_srec.errors import ConfigError
from dist_srec.train.srec_train import SRecRunConfig
from dist_srec.train.teacher import TeacherRunConfig
from tests.train.helpers import prepared_catalog, tiny_teacher


def _history(run: Path) -> list[dict]:
    return json.loads((run / "last" / "train_state.json").read_text())["train_state"]["history"]


def test_teacher_run_file_replays_the_run(tmp_path: Path) -> None:
    data = prepared_catalog(tmp_path, users=30, items=40)
    argv = ["pretrain-teacher", "--data", data, "--out", tmp_path / "a", "--train.loop.epochs", "2",
            "--train.loop.eval_every_epochs", "1", "--train.batch_size", "8", "--model.hidden", "8",
            "--model.max_len", "10", "--train.eval_negatives", "10", "--train.loop.progress", "false",
            "--final_eval", "false"]  # fmt: skip
    assert main(argv) == 0
    doc = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert doc["model"]["hidden"] == 8 and doc["train"]["loop"]["epochs"] == 2 and doc["final_eval"] is False
    assert (
        main(["pretrain-teacher", "--config", tmp_path / "a" / "config.yaml", "--out", tmp_path / "b"]) == 0
    )
    a, b = _history(tmp_path / "a"), _history(tmp_path / "b")
    assert [(h["step"], h["train_loss"], h["ndcg@10"]) for h in a] == [
        (h["step"], h["train_loss"], h["ndcg@10"]) for h in b
    ]


def test_llm_srec_run_file_replays_the_run_and_reaches_nested_fields(tmp_path: Path) -> None:
    data = prepared_catalog(tmp_path, users=30, items=40)
    teacher = tiny_teacher(data, tmp_path / "teacher")
    argv = ["train", "--data", data, "--teacher", teacher, "--out", tmp_path / "a", "--llm.path", "tiny",
            "--llm.dtype", "float32", "--model.head_hidden", "32", "--model.loss.distill_weight", "128",
            "--loop.max_steps", "2", "--loop.eval_every_steps", "1", "--batch_size", "4", "--eval_users", "10",
            "--eval_negatives", "20", "--loop.progress", "false"]  # fmt: skip
    assert main(argv) == 0
    doc = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert doc["model"]["loss"]["distill_weight"] == 128.0 and doc["llm"]["path"] == "tiny"
    assert main(["train", "--config", tmp_path / "a" / "config.yaml", "--out", tmp_path / "b"]) == 0
    a, b = _history(tmp_path / "a"), _history(tmp_path / "b")
    assert len(a) == 2 and [(h["train_loss"], h["ndcg@10"]) for h in a] == [
        (h["train_loss"], h["ndcg@10"]) for h in b
    ]
    _, p, ns = parse(
        ["train", "--config", tmp_path / "a" / "config.yaml", "--model.prompts.max_history_items", "5"]
    )
    cfg = run_config(p, ns)
    assert cfg.model.prompts.max_history_items == 5 and cfg.model.loss.distill_weight == 128.0


def test_the_demo_runs_from_its_committed_run_files() -> None:
    t = load_run_file(TeacherRunConfig, CONFIGS / "demo_teacher.yaml", data="d", out="o")
    s = load_run_file(SRecRunConfig, CONFIGS / "demo_llm-srec.yaml", data="d", teacher="t", out="o",
                      loop={"max_steps": 4})  # fmt: skip
    assert t.train.loop.time_budget_s == 150 and t.final_eval is False
    assert (
        s.llm.path == "smollm2"
        and s.loop.time_budget_s == 420
        and s.loop.max_steps == 4
        and (s.llm.num_layers, s.loop.lr, s.loop.warmup_steps, s.loop.epochs) == (8, 1e-3, 10, 2)
    )


def test_the_papers_settings_load_as_a_named_run_file() -> None:
    s = load_run_file(SRecRunConfig, CONFIGS / "paper_llm-srec.yaml", data="d", teacher="t", out="o")
    assert (s.loop.lr, s.loop.lr_decay, s.loop.epochs, s.loop.patience, s.loop.select_metric) == (
        1e-4, 0.95, 10, 5, "hr@10",
    )  # fmt: skip
    assert s.batch_size == 20 and s.model.loss.num_negatives == 3 and s.model.prompts.history_separator == ","
    assert s.loop.warmup_steps == 0 and s.eval_users == 0


def test_a_bad_run_file_names_the_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("loop:\n  lr: fast\n")
    with pytest.raises(ConfigError, match=rf"run file {bad}: .*loop\.lr"):
        load_run_file(SRecRunConfig, bad, data="d", teacher="t", out="o")


@pytest.mark.parametrize(
    "command", [c.name for c in COMMANDS if c.name != "launch"] + ["launch train", "launch pretrain-teacher"]
)
def test_help_shows_defaults_and_examples(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main([*command.split(), "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "examples:\n  dist-srec" in out and "default:" in out
