"""The README's main job, as a smoke run: every stage on real ML-100K with the tiny random LM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dist_srec.cli.main import main


@pytest.mark.real_assets
def test_demo_smoke_run_and_stage_reuse(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--llm", "tiny", "--fast", "true"]) == 0
    text = capsys.readouterr().out
    assert "| llm-srec |" in text and "| sasrec, shuffled history |" in text and "top 5 for user" in text
    assert "LLM-SRec above: 4 steps of 20 users = 0.08 epochs (max_steps)" in text  # what the row trained
    assert "Committed full-length results" in text
    doc = json.loads((out / "eval-test.json").read_text())
    assert doc["report"]["llm-srec"]["sampled"]["count"] == 100
    assert (out / "teacher" / "best" / "model.safetensors").is_file()
    # a second run reuses every stage: no new training steps, the same report
    stamp = (out / "llm-srec" / "best" / "model.safetensors").stat().st_mtime_ns
    assert main(["demo", "--out", str(out), "--llm", "tiny", "--fast", "true"]) == 0
    assert "(reusing" in capsys.readouterr().out
    assert (out / "llm-srec" / "best" / "model.safetensors").stat().st_mtime_ns == stamp
