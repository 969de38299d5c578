"""The fidelity table's statistics (`benchmarks/reference/fidelity_table.py`): the spread over seeds, the
acceptance rows that decide whether dist-srec matches the paper's code, and the loss curves recovered
from dist-srec's logged running means."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.reference.fidelity_table import acceptance, block_means, recipe_rows, spread


def ref_doc(ndcg: float, hr: float | None) -> dict:
    e = {"recomputed_ndcg@10_fp32_products_pessimistic": ndcg}
    if hr is not None:
        e["recomputed_hr@10_fp32_products_pessimistic"] = hr
    return {"eval": e}


def test_spread_is_mean_sample_std_and_se() -> None:
    s = spread([0.1, 0.2, 0.3])
    assert s["mean"] == pytest.approx(0.2) and s["std"] == pytest.approx(0.1)
    assert s["se"] == pytest.approx(0.1 / math.sqrt(3)) and (s["min"], s["max"]) == (0.1, 0.3)
    assert math.isnan(spread([0.5])["std"])


def test_acceptance_flags_a_gap_beyond_two_se_and_passes_a_small_one() -> None:
    refs = [ref_doc(x, x + 0.2) for x in (0.20, 0.21, 0.22)]
    close = [{"ndcg@10": x, "hr@10": x + 0.2} for x in (0.19, 0.21, 0.23)]
    far = [{"ndcg@10": x, "hr@10": x + 0.2} for x in (0.10, 0.11, 0.12)]
    rows = acceptance(refs, close, refs, far)
    got = {(r["variant"], r["metric"]): r for r in rows}
    assert set(got) == {(v, m) for v in ("LLM-SRec", "no-distill") for m in ("ndcg@10", "hr@10")}
    assert got["LLM-SRec", "ndcg@10"]["within 2 SE"] and got["LLM-SRec", "hr@10"]["within 2 SE"]
    nd = got["no-distill", "ndcg@10"]
    assert not nd["within 2 SE"] and nd["difference"] == pytest.approx(-0.1) and nd["in SE"] < -2


def test_acceptance_skips_a_metric_the_reference_runs_did_not_record() -> None:
    rows = acceptance([ref_doc(0.2, None)] * 2, [{"ndcg@10": 0.2, "hr@10": 0.4}] * 2, [], [])
    assert [(r["variant"], r["metric"]) for r in rows] == [("LLM-SRec", "ndcg@10")]


def test_block_means_recover_each_interval_from_running_means(tmp_path: Path) -> None:
    # per-step retrieval 4, 2, 3, 1 | 2, 2, 1, 1 (two epochs of 4 steps), logged every 2 steps as running
    # means that restart each epoch; the epoch end is a row without train terms
    rows = [
        {"step": 2, "epoch": 0, "train_retrieval": 3.0, "train_distill_mse": 0.5},
        {"step": 4, "epoch": 0, "train_retrieval": 2.5, "train_distill_mse": 0.5},
        {"step": 4, "epoch": 1, "lr": 1e-3},
        {"step": 6, "epoch": 1, "train_retrieval": 2.0, "train_distill_mse": 0.25},
        {"step": 8, "epoch": 1, "train_retrieval": 1.5, "train_distill_mse": 0.25},
        {"step": 8, "epoch": 2, "valid_ndcg@10": 0.3},
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    got = block_means(tmp_path)
    assert got["retrieval"] == [(2, 3.0), (4, 2.0), (6, 2.0), (8, 1.0)]
    assert got["match"] == [(2, 0.5), (4, 0.5), (6, 0.25), (8, 0.25)]


def test_recipe_rows_give_the_gain_over_both_sides() -> None:
    refs = [ref_doc(x, 2 * x) for x in (0.19, 0.20, 0.21)]
    ours = [{"ndcg@10": x, "hr@10": 2 * x} for x in (0.20, 0.21, 0.22)]
    recipe = [{"ndcg@10": x, "hr@10": 2 * x} for x in (0.23, 0.24, 0.25)]
    nd, hr = recipe_rows(refs, ours, recipe)
    assert (nd["metric"], hr["metric"]) == ("ndcg@10", "hr@10")
    assert nd["recipe / reference - 1"] == pytest.approx(0.2) and hr[
        "recipe / reference - 1"
    ] == pytest.approx(0.2)
    assert nd["recipe / dist-srec - 1"] == pytest.approx(0.24 / 0.21 - 1)
    assert nd["recipe - reference in SE"] == pytest.approx(0.04 / math.hypot(0.01 / 3**0.5, 0.01 / 3**0.5))
