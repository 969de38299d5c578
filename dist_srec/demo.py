"""The main job on the embedded default: ML-100K (from the `recbole` package) end to end.

Stages, each reused when its output already exists:
1. prepare ML-100K -> `<out>/data` (parquet catalog + webdataset shards).
"""

from __future__ import annotations

from pathlib import Path

from dist_srec.config import PrepareConfig
from dist_srec.data.prepare import prepare, summary


def run_demo(out: str) -> int:
    root = Path(out)
    print("[1/1] prepare ML-100K")
    manifest = prepare(PrepareConfig(dataset="ml-100k", out=str(root / "data")))
    print(summary(manifest))
    print(f"data ready in {root / 'data'}; the teacher and LLM-SRec stages are not built yet.")
    return 0
