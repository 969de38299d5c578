"""Bad raw data and bad prepared data: refused early, with the place named, nothing written."""

from __future__ import annotations

import csv
import json
import re
import tarfile
from pathlib import Path

import pytest

from dist_srec.data.catalog import Catalog
from tests.bad_input.conftest import lock_held_elsewhere, one_error_line, run_cli
from tests.train.helpers import prepared_catalog


def _custom(root: Path, rows: list[tuple[str, str, object]], titles: dict[str, str]) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    inter, items = root / "inter.csv", root / "items.csv"
    with inter.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "timestamp"])
        w.writerows(rows)
    with items.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "title"])
        w.writerows(titles.items())
    return inter, items


def _prepare(inter: Path, items: Path, out: Path, *extra: str) -> list[str]:
    return ["prepare", "--dataset", "custom", "--interactions", inter, "--items", items, "--out", out,
            "--kcore", "0", "--progress", "false", *extra]  # fmt: skip


ROWS = [("u1", "i1", 1_600_000_000), ("u1", "i2", 1_600_000_100), ("u1", "i3", 1_600_000_200)]
TITLES = {"i1": "One", "i2": "Two", "i3": "Three"}


@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        (1e20, r"timestamp 1e\+20 is not a date between 1970 and 2099 in unit 's'"),
        (1_600_000_100_000, r"it looks like ms \(--timestamp-unit ms\)"),
        (1_600_000_100_000_000_000, r"it looks like ns \(--timestamp-unit ns\)"),
        (-5, r"timestamp -5 is not a date"),
    ],
)
def test_out_of_range_timestamps_name_the_row(tmp_path: Path, capsys, value: object, pattern: str) -> None:
    rows = [ROWS[0], ("u1", "i2", value), ROWS[2]]
    inter, items = _custom(tmp_path / "raw", rows, TITLES)
    code, err = run_cli(_prepare(inter, items, tmp_path / "out"), capsys)
    line = one_error_line(err)
    assert code == 2 and re.search(pattern, line), line
    assert f"file {inter}, row 3, field 'timestamp'" in line
    assert not (tmp_path / "out").exists()


def test_millisecond_timestamps_prepare_with_their_unit(tmp_path: Path, capsys) -> None:
    rows = [(u, i, t * 1000) for u, i, t in ROWS]
    inter, items = _custom(tmp_path / "raw", rows, TITLES)
    code, _ = run_cli(_prepare(inter, items, tmp_path / "out", "--timestamp_unit", "ms"), capsys)
    assert code == 0
    ts = Catalog.load(tmp_path / "out").interactions(["timestamp"])["timestamp"].to_pylist()
    assert ts == [t for _, _, t in ROWS]


def test_non_utf8_title_names_file_row_and_field(tmp_path: Path, capsys) -> None:
    inter, items = _custom(tmp_path / "raw", ROWS, TITLES)
    items.write_bytes(b"item_id,title\ni1,One\ni2,Tw\xff\xfeo\ni3,Three\n")
    code, err = run_cli(_prepare(inter, items, tmp_path / "out"), capsys)
    line = one_error_line(err)
    assert code == 2 and "not valid UTF-8" in line and f"file {items}, row 3, field 'title'" in line
    assert not (tmp_path / "out").exists()


def test_repeated_item_ids_are_counted_or_refused(tmp_path: Path, capsys) -> None:
    inter, items = _custom(tmp_path / "raw", ROWS, TITLES)
    items.write_text("item_id,title\ni1,One\ni2,Two\ni2,Second two\ni3,Three\n")
    code, err = run_cli(_prepare(inter, items, tmp_path / "strict", "--strict", "true"), capsys)
    line = one_error_line(err)
    assert code == 2 and "item id 'i2' is repeated (first at row 2" in line
    assert f"file {items}, row 3, field 'item_id'" in line and not (tmp_path / "strict").exists()
    assert run_cli(_prepare(inter, items, tmp_path / "out"), capsys)[0] == 0
    cat = Catalog.load(tmp_path / "out")
    assert cat.manifest["stats"]["repeated_item_rows"] == 1 and cat.titles[2] == "Two"


def test_all_placeholder_titles_warn(tmp_path: Path, capsys, caplog) -> None:
    inter, items = _custom(tmp_path / "raw", ROWS, {"x1": "A", "x2": "B"})
    code, _ = run_cli(_prepare(inter, items, tmp_path / "out"), capsys)
    assert code == 0 and "every item title is a placeholder" in caplog.text


def test_a_second_prepare_into_the_same_output_is_refused(tmp_path: Path, capsys) -> None:
    inter, items = _custom(tmp_path / "raw", ROWS, TITLES)
    out = tmp_path / "out"
    with lock_held_elsewhere(out, "prepare custom") as pid:
        code, err = run_cli(_prepare(inter, items, out), capsys)
    line = one_error_line(err)
    assert code == 2 and f"{out} is being written by another run (prepare custom: pid {pid} on host" in line
    assert not out.exists()
    assert run_cli(_prepare(inter, items, out), capsys)[0] == 0, "the lock dies with its holder"


def _teacher_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["pretrain-teacher", "--data", data, "--out", out, "--train.loop.epochs", "1", "--model.hidden", "8",
            "--model.max_len", "10", "--train.eval_negatives", "10", "--train.loop.progress", "false",
            "--final_eval", "false", *extra]  # fmt: skip


def test_lowered_sample_count_in_the_manifest_is_refused(tmp_path: Path, capsys) -> None:
    data = prepared_catalog(tmp_path, users=30, items=40)
    manifest = json.loads((data / "manifest.json").read_text())
    entry = manifest["shards"]["train"][0]
    entry["count"] -= 1
    (data / "manifest.json").write_text(json.dumps(manifest))
    code, err = run_cli(_teacher_argv(data, tmp_path / "run"), capsys)
    line = one_error_line(err)
    assert (
        code == 2 and f"shard holds {entry['count'] + 1} samples, the manifest says {entry['count']}" in line
    )
    assert f"file {data / entry['file']}, field 'count'" in line and not (tmp_path / "run").exists()


def test_corrupt_validation_shard_is_found_before_the_first_step(tmp_path: Path, capsys) -> None:
    data = prepared_catalog(tmp_path, users=30, items=40)
    shard = data / json.loads((data / "manifest.json").read_text())["shards"]["valid"][0]["file"]
    with tarfile.open(shard) as tf:
        assert tf.getmembers()
    shard.write_bytes(shard.read_bytes()[:-700])
    code, err = run_cli(_teacher_argv(data, tmp_path / "run"), capsys)
    line = one_error_line(err)
    assert code == 2 and "shard sha256 does not match the manifest" in line and f"file {shard}" in line
    assert not (tmp_path / "run").exists(), "refused before any training"


def test_too_many_negatives_are_refused_before_training(tmp_path: Path, capsys) -> None:
    data = prepared_catalog(tmp_path, users=30, items=40)
    code, err = run_cli(_teacher_argv(data, tmp_path / "run", "--train.eval_negatives", "36"), capsys)
    line = one_error_line(err)
    assert code == 2 and "config field 'eval_negatives': 36 sampled negatives per user, but user" in line
    code, err = run_cli(_teacher_argv(data, tmp_path / "run", "--train.loss", "sampled_softmax", "--train.num_negatives",
                                      "5000"), capsys)  # fmt: skip
    line = one_error_line(err)
    assert code == 2 and "config field 'num_negatives': 5000 training negatives" in line
    assert not (tmp_path / "run").exists()


def test_unknown_select_metric_is_refused_at_once(tmp_path: Path, capsys) -> None:
    code, err = run_cli(
        _teacher_argv(tmp_path / "nodata", tmp_path / "run", "--train.loop.select_metric", "foo"), capsys
    )
    line = one_error_line(err)
    assert code == 2 and "config field 'select_metric': 'foo' is not one of" in line
    assert not (tmp_path / "run").exists()
