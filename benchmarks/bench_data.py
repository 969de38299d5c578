"""Data pipeline benchmark on ML-1M: preparation time, shard write/read samples/s, peak RSS, and the
flat-memory check on a 10x synthetic replication.

    .venv/bin/python benchmarks/bench_data.py            # ML-1M + 10x replication
    .venv/bin/python benchmarks/bench_data.py --scale 1   # ML-1M only

Each measurement runs in a fresh child process so its peak RSS is its own. Writes
benchmarks/results/data_ml-1m.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import machine, markdown_table, peak_rss_mb, run_child, write_results


# ------------------------------------------------------------------------------------------- children
def _child_prepare(dataset: str, out: str, inter: str | None, items: str | None) -> dict:
    from dist_srec.config import PrepareConfig
    from dist_srec.data.catalog import build_catalog
    from dist_srec.data.prepare import prepare
    from dist_srec.data.shards import write_shards
    from dist_srec.data.sources import load_raw

    cfg = PrepareConfig(dataset=dataset, out=out, interactions=inter, items=items, progress=False)
    t0 = time.perf_counter()
    m = prepare(cfg)
    total = time.perf_counter() - t0
    # shard writing alone, on the same catalog, into a scratch folder
    cat = build_catalog(load_raw(cfg), cfg)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        _, counts = write_shards(cat, Path(tmp), cfg.samples_per_shard, 0, progress=False)
        write_s = time.perf_counter() - t0
    samples = sum(c["written"] for c in counts.values())
    return {
        "prepare_s": total,
        "users": m["counts"]["num_users"],
        "items": m["counts"]["num_items"],
        "interactions": m["counts"]["num_interactions"],
        "shard_samples": samples,
        "shard_write_samples_per_s": samples / write_s,
        "prepare_peak_rss_mb": peak_rss_mb(),
    }


def _child_read(data: str, workers: int) -> dict:
    from dist_srec.config import LoaderConfig
    from dist_srec.data.loader import ShardLoader

    ld = ShardLoader(data, "train", LoaderConfig(batch_size=128, max_len=200, num_workers=workers))
    t0, n = time.perf_counter(), 0
    for b in ld:
        n += int(b["mask"].sum())
    dt = time.perf_counter() - t0
    return {
        "workers": workers,
        "samples": n,
        "read_samples_per_s": n / dt,
        "read_samples_per_s_per_worker": n / dt / max(1, workers),
        "reader_peak_rss_mb": max(peak_rss_mb(), peak_rss_mb(children=True)),
    }


def _child_replicate(out: str, factor: int) -> dict:
    """Write a custom-format copy of ML-1M with every user replicated `factor` times."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from dist_srec.config import PrepareConfig
    from dist_srec.data.sources import load_raw

    raw = load_raw(PrepareConfig(dataset="ml-1m", out="unused"))
    n = len(raw.user_key)
    users = pa.chunked_array([pc.binary_join_element_wise(raw.user_key, f"{r}", "#") for r in range(factor)])
    items = pa.chunked_array([raw.item_key] * factor)
    table = pa.table({"user_id": users, "item_id": items, "timestamp": np.tile(raw.timestamp, factor)})
    Path(out).mkdir(parents=True, exist_ok=True)
    pq.write_table(table, f"{out}/interactions.parquet")
    pq.write_table(
        pa.table({"item_id": raw.item_keys.astype(str), "title": raw.titles.astype(str)}),
        f"{out}/items.parquet",
    )
    return {"rows": n * factor}


# ------------------------------------------------------------------------------------------- driver
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--scale", type=int, default=10, help="replication factor for the flat-memory check (1 = skip)"
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--args", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        fn = {"prepare": _child_prepare, "read": _child_read, "replicate": _child_replicate}[a.child]
        print(json.dumps(fn(**json.loads(a.args))))
        return

    me = str(Path(__file__).resolve())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("ml-1m x1", "ml-1m", None, None)]
        if a.scale > 1:
            src = f"{tmp}/rep"
            run_child([me, "--child", "replicate", "--args", json.dumps({"out": src, "factor": a.scale})])
            runs.append(
                (f"ml-1m x{a.scale}", "custom", f"{src}/interactions.parquet", f"{src}/items.parquet")
            )
        for label, dataset, inter, items in runs:
            out = f"{tmp}/{label.replace(' ', '_')}"
            prep = run_child(
                [
                    me,
                    "--child",
                    "prepare",
                    "--args",
                    json.dumps({"dataset": dataset, "out": out, "inter": inter, "items": items}),
                ]
            )
            for workers in (0, 1, 2):
                read = run_child(
                    [me, "--child", "read", "--args", json.dumps({"data": out, "workers": workers})]
                )
                rows.append({"data": label, **prep, **read})
                print(json.dumps(rows[-1]), flush=True)

    base = [r for r in rows if r["data"] == "ml-1m x1"]
    big = [r for r in rows if r["data"] != "ml-1m x1"]
    flat = None
    if big:
        ratio = max(b["reader_peak_rss_mb"] / s["reader_peak_rss_mb"] for s, b in zip(base, big))
        flat = {"reader_rss_ratio_max": ratio, "data_ratio": a.scale, "flat": ratio < 1.5}
    payload = {
        "benchmark": "data",
        "machine": machine(),
        "settings": {"batch_size": 128, "max_len": 200},
        "rows": rows,
        "flat_memory": flat,
    }
    cols = [
        "data",
        "workers",
        "users",
        "interactions",
        "prepare_s",
        "prepare_peak_rss_mb",
        "shard_write_samples_per_s",
        "read_samples_per_s",
        "read_samples_per_s_per_worker",
        "reader_peak_rss_mb",
    ]
    md = [
        f"# Data pipeline benchmark ({payload['machine']['date']})",
        "",
        f"Machine: {payload['machine']['cpu']}, {payload['machine']['cores']} cores. Reader: batch 128, L=200, "
        "train split, sha256 verification on. Each row's numbers come from fresh processes.",
        "",
        markdown_table(rows, cols),
        "",
    ]
    if flat:
        md.append(
            f"Flat-memory check: {a.scale}x the data -> reader peak RSS x{flat['reader_rss_ratio_max']:.2f} "
            f"({'flat' if flat['flat'] else 'NOT flat'}). Preparation holds the interaction arrays in memory, "
            "so its RSS grows with the data; only the reader streams."
        )
    js, mdp = write_results("data_ml-1m", payload, "\n".join(md))
    print(f"wrote {js} and {mdp}")


if __name__ == "__main__":
    main()
