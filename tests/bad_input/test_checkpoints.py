"""Checkpoints meeting the wrong catalog, garbage weights, two writers, and saves a kill interrupted."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dist_srec.errors import CheckpointError
from dist_srec.train.checkpoint import save_checkpoint
from tests.bad_input.conftest import lock_held_elsewhere, one_error_line, run_cli, tree_digest
from tests.data.synth import write_custom
from tests.train.helpers import prepared_catalog, tiny_teacher, train_tiny


@pytest.fixture(scope="module")
def two_catalogs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(catalog A, catalog B, a teacher of A): B has A's users, items and interactions, but its items'
    titles are permuted, so the same ids mean other items: only the content identity tells them apart."""
    root = tmp_path_factory.mktemp("two-catalogs")
    a = prepared_catalog(root / "a", users=30, items=40)
    inter, meta = write_custom(root / "b" / "raw", users=30, items=40, per_user=(6, 14))
    rows = list(csv.reader(meta.open()))
    header, body = rows[0], rows[1:]
    body = [[key, body[(i + 7) % len(body)][1], desc] for i, (key, _, desc) in enumerate(body)]
    with meta.open("w", newline="") as f:
        csv.writer(f).writerows([header, *body])
    b = root / "b" / "data"
    from dist_srec.config import PrepareConfig
    from dist_srec.data.prepare import prepare

    prepare(
        PrepareConfig(dataset="custom", out=str(b), interactions=str(inter), items=str(meta), progress=False)
    )
    return a, b, tiny_teacher(a, root / "teacher")


def test_teacher_of_another_catalog_with_the_same_item_count_is_refused(
    two_catalogs, tmp_path, capsys
) -> None:
    a, b, teacher = two_catalogs
    out = tmp_path / "eval.json"
    code, err = run_cli(["evaluate-teacher", "--ckpt", teacher, "--data", b, "--results", out], capsys)
    line = one_error_line(err)
    assert code == 2 and f"teacher checkpoint {teacher} does not fit this catalog" in line
    assert (
        f"trained on catalog {a.resolve()} (content_sha256" in line
        and f"this catalog is {b.resolve()}" in line
    )
    assert not out.exists()
    argv = [
        "train",
        "--data",
        b,
        "--teacher",
        teacher,
        "--llm.path",
        "tiny",
        "--out",
        tmp_path / "run",
        "--eval_negatives",
        "10",
        "--loop.progress",
        "false",
    ]
    code, err = run_cli(argv, capsys)
    assert (
        code == 2 and "does not fit this catalog" in one_error_line(err) and not (tmp_path / "run").exists()
    )


def test_llm_srec_checkpoint_of_another_catalog_is_refused(two_catalogs, tmp_path, capsys) -> None:
    a, b, teacher = two_catalogs
    best = train_tiny(a, teacher, tmp_path / "run")
    before = tree_digest(tmp_path / "run")
    code, err = run_cli(["evaluate", "--ckpt", best, "--data", b, "--results", tmp_path / "e.json", "--progress", "false"],
                        capsys)  # fmt: skip
    line = one_error_line(err)
    assert code == 2 and "does not fit this catalog" in line and str(b.resolve()) in line
    assert tree_digest(tmp_path / "run") == before and not (tmp_path / "e.json").exists()


def test_teacher_with_nan_weights_is_refused_on_load(two_catalogs, tmp_path, capsys) -> None:
    a, _, teacher = two_catalogs
    bad = tmp_path / "bad-teacher"
    shutil.copytree(teacher, bad)
    weights = load_file(bad / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = torch.full_like(weights[name], float("nan"))  # a finite header, garbage data
    save_file(weights, bad / "model.safetensors")
    code, err = run_cli(
        ["evaluate-teacher", "--ckpt", bad, "--data", a, "--results", tmp_path / "r.json"], capsys
    )
    line = one_error_line(err)
    assert code == 2 and f"{bad / 'model.safetensors'}: tensor '{name}' has" in line and "non-finite" in line
    assert not (tmp_path / "r.json").exists()


def test_non_finite_weights_are_never_saved(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"tensor 'w' has 1 non-finite values"):
        save_checkpoint(tmp_path / "ck", model_state={"w": torch.tensor([1.0, float("inf")])}, config={})
    assert not (tmp_path / "ck").exists()


def _teacher_argv(data: Path, out: Path, epochs: int) -> list:
    return ["pretrain-teacher", "--data", data, "--out", out, "--train.loop.epochs", str(epochs),
            "--train.loop.eval_every_epochs", "1", "--model.hidden", "8", "--model.max_len", "10",
            "--train.eval_negatives", "10", "--train.loop.progress", "false", "--final_eval", "false"]  # fmt: skip


def test_a_second_training_run_into_the_same_output_is_refused(two_catalogs, tmp_path, capsys) -> None:
    a, _, _ = two_catalogs
    run = tmp_path / "run"
    assert run_cli(_teacher_argv(a, run, 1), capsys)[0] == 0
    before = tree_digest(run)
    with lock_held_elsewhere(run, "teacher training") as pid:
        code, err = run_cli(_teacher_argv(a, run, 2), capsys)
    line = one_error_line(err)
    assert code == 2 and f"{run} is being written by another run (teacher training: pid {pid}" in line
    assert tree_digest(run) == before, "the refused run changed nothing"


def test_an_interrupted_save_is_recovered_and_stale_temporaries_removed(
    two_catalogs, tmp_path, capsys
) -> None:
    a, _, _ = two_catalogs
    run = tmp_path / "run"
    assert run_cli(_teacher_argv(a, run, 1), capsys)[0] == 0
    stale = run / ".last.abc123.tmp"
    (stale / "last").mkdir(parents=True)
    (stale / "last" / "junk.bin").write_bytes(b"\0" * 1000)
    (run / "last").rename(run / ".last.old")  # a kill between the swap's two renames
    assert run_cli(_teacher_argv(a, run, 2), capsys)[0] == 0
    state = json.loads((run / "last" / "train_state.json").read_text())["train_state"]
    assert state["epoch"] == 2 and len(state["history"]) == 2, "resumed from the recovered epoch-1 state"
    assert not stale.exists() and not (run / ".last.old").exists()
