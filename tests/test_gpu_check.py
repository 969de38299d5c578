"""The prepared GPU check (`benchmarks/gpu_check.sh`) in its CPU dry-run mode: the same four steps
(kernel tests, kernel benchmark, a train step on both kernel paths, the step with fused compiled
decoder layers) on small settings, so that the script a GPU session runs cannot rot between GPU
sessions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (ROOT / "kernels").is_dir(), reason="needs the source tree (kernels/)")
def test_gpu_check_dry_run(tmp_path: Path) -> None:
    out = tmp_path / "gpu-check"
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), "--dry-run"],
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    log = (out / "gpu_check.log").read_text() if (out / "gpu_check.log").is_file() else ""
    assert done.returncode == 0, done.stdout[-2000:] + log[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["ok"]
        and summary["dry_run"]
        and set(summary["steps"]) == {"kernel_tests", "bench_kernels", "gpu_step", "fused_step"}
    )
    assert 'failures="0"' in (out / "kernel_tests.xml").read_text()
    kernels = json.loads((out / "gpu_check_kernels.json").read_text())
    assert kernels["rows"] and not any("error" in r for r in kernels["rows"])
    step = json.loads((out / "gpu_step.json").read_text())
    assert [r["path"] for r in step["rows"]] == ["torch", "triton"] and step["parity"]["triton"]["ok"]
    fused = json.loads((out / "fused_step.json").read_text())
    assert [r["path"] for r in fused["rows"]] == ["torch", "fused"] and fused["parity"]["fused"]["ok"]
    # the fused row ran on fused layers, every one of them; the torch row on none
    assert [r["layers_fused"] for r in fused["rows"]] == [0, fused["lm"]["layers"]]
    assert all(r["samples_per_s"] > 0 and r["items_per_s"] > 0 for r in step["rows"] + fused["rows"])
