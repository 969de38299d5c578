"""The fidelity driver (`benchmarks/reference/run_fidelity.py`): the runs it makes, the committed run file
it trains from, and that a second invocation skips what is finished and never treats a half-written
result as finished."""

from __future__ import annotations

from pathlib import Path

from benchmarks.reference.run_fidelity import CONFIG, jobs, main

ARGS = ["--ref", "REF", "--ref-python", "PY", "--lm", "LM", "--data", "DATA", "--teacher", "T"]


def test_jobs_cover_every_variant_and_seed() -> None:
    todo = jobs([0, 1], [0])
    stems = [j.stem for j in todo]
    assert stems == ["ref_llmsrec_s0", "srec_llmsrec_s0", "srec_warmup_s0", "ref_llmsrec_s1",
                     "srec_llmsrec_s1", "srec_warmup_s1", "ref_nodistill_s0", "srec_nodistill_s0"]  # fmt: skip
    changes = {j.stem: j.extra for j in todo}
    assert changes["srec_warmup_s0"] == ("--loop.warmup_steps", "10")
    assert changes["ref_nodistill_s0"] == ("--no_distill",)
    assert changes["srec_nodistill_s0"] == ("--model.loss.distill", "false")
    assert changes["srec_llmsrec_s0"] == changes["ref_llmsrec_s0"] == ()


def test_committed_run_file_is_the_tables_settings() -> None:
    from dist_srec.config import load_run_file
    from dist_srec.train.srec_train import SRecRunConfig

    cfg = load_run_file(SRecRunConfig, CONFIG, data="d", teacher="t", out="o")
    assert (cfg.llm.num_layers, cfg.batch_size, cfg.loop.lr, cfg.loop.epochs) == (8, 20, 1e-3, 2)
    assert cfg.model.teacher_dropout and cfg.model.prompts.history_separator == ","
    assert cfg.loop.warmup_steps == 0 and cfg.model.loss.distill and cfg.loop.patience == 0
    assert 0 < cfg.loop.save_every_steps < 48  # resumable within a run


def test_dry_run_skips_finished_and_ignores_half_written(tmp_path: Path, capsys) -> None:
    (tmp_path / "ref_llmsrec_s0.json").write_text("{}")  # finished
    (tmp_path / "srec_llmsrec_s0.eval.json.tmp").write_text("{}")  # killed while writing
    assert main([*ARGS, "--out", str(tmp_path), "--seeds", "0", "--nodistill-seeds", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "[fidelity] ref_llmsrec_s0: done" in lines
    train = [x for x in lines if x.startswith("[fidelity] srec_llmsrec_s0:") and " train " in x]
    assert len(train) == 1 and f"--config {CONFIG}" in train[0] and "--loop.seed 0" in train[0]
    assert any(x.startswith("[fidelity] srec_llmsrec_s0:") and " evaluate " in x for x in lines)
    table = next(x for x in lines if x.startswith("[fidelity] table:"))
    assert f"--reference {tmp_path}/ref_llmsrec_s0.json --srec {tmp_path}/srec_llmsrec_s0 " in table
    (tmp_path / "ref_llmsrec_s0.json").unlink()  # the reference's lr is the run file's
    main([*ARGS, "--out", str(tmp_path), "--seeds", "0", "--nodistill-seeds", "--dry-run"])
    assert " --steps 96 --lr 0.001 " in capsys.readouterr().out
    assert not list(tmp_path.glob("*.log"))  # a dry run runs nothing
