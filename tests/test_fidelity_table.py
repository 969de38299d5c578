"""The fidelity table's statistics (`benchmarks/reference/fidelity_table.py`): the spread over seeds and
the acceptance rows that decide whether dist-srec matches the paper's code."""

from __future__ import annotations

import math

import pytest

from benchmarks.reference.fidelity_table import acceptance, spread


def ref_doc(ndcg: float, hr: float | None) -> dict:
    e = {"recomputed_ndcg@10_pessimistic": ndcg}
    if hr is not None:
        e["recomputed_hr@10_pessimistic"] = hr
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
