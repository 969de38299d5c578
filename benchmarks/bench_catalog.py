"""Industrial-scale catalogs: exact top-K over sharded fp16 vector stores, and real LLM-SRec encoding.

    # synthetic stores of 100k, 1M and 10M 128-d fp16 items (built once, shard by shard, and reused),
    # plus ML-1M with a trained checkpoint: catalog encoding items/s, user encoding and top-K users/s
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_catalog.py --ckpt runs/srec-ml-1m/best
    .venv/bin/python benchmarks/bench_catalog.py --sizes 10000,100000 --name _scratch/catalog_smoke   # smoke

Synthetic part: per size N, a fresh child process opens the store and ranks `--users` random user
vectors (with 50 excluded history items each) for top-K (K = `--k`), `--topk-users` users per scan,
`--chunk-items` items per chunk (`dist_srec.eval.ranking.chunked_topk` over `VectorStore.iter_chunks`);
it reports users/s (median of `--repeats` scans after one warm-up) and its peak RSS, which must stay
flat in N once N exceeds the chunk size (the store is read one mmapped chunk at a time; peak = the
child's VmHWM, which unlike `ru_maxrss` does not carry over the parent's peak through fork + exec). Stores live in
`--scratch` (default ~/.cache/dist-srec/bench-catalog, about 2.6 GB for 10M).

Real part (`--ckpt`): the checkpoint's model (its LM, teacher and catalog as recorded; `--data` to
override) encodes the first `--encode-items` items (items/s through the frozen LLM + item head); the
full catalog's store is built once under `--scratch`; then `--real-users` users are encoded (users/s
through the LLM) and ranked against the store (top-K users/s). Writes benchmarks/results/<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import machine, markdown_table, peak_rss_mb, run_child, time_it, write_results

DIM = 128
SHARD_ROWS = 65536


# ------------------------------------------------------------------------------------------- stores
def synthetic_store(root: Path, n: int, seed: int = 0) -> Path:
    """A finished fp16 store of n random unit-norm vectors, written shard by shard (reused if present)."""
    import torch

    from dist_srec.data.item_vectors import StoreIdentity, StoreLayout, VectorStore, finalize, write_shard
    from dist_srec.inference.encode import prepare_store

    fake = f"synthetic-{n}-{seed}"
    ident = StoreIdentity(heads_key=fake, teacher_sha256=fake, model_config_sha256=fake, lm_content_hash=fake, catalog_sha256=fake,
                          num_items=n, dim=DIM)  # fmt: skip
    manifest, pending = prepare_store(root, ident, StoreLayout(dtype="float16", shard_rows=SHARD_ROWS))
    for s in pending:
        e = manifest["shards"][s]
        v = torch.randn(e["rows"], DIM, generator=torch.Generator().manual_seed(seed * 100003 + s))
        write_shard(root / e["file"], torch.nn.functional.normalize(v, dim=1), "float16")
    if not manifest["complete"]:
        finalize(root, manifest)
    VectorStore(root, ident)
    return root


# ------------------------------------------------------------------------------------------- children
def _rss_mb(field: str = "VmHWM") -> float:
    """This process's peak (VmHWM) or current (VmRSS) resident set, MiB. Unlike `ru_maxrss`, VmHWM
    starts afresh at exec: a child forked from a big parent does not inherit the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return peak_rss_mb()


def _child_topk(store: str, users: int, k: int, chunk_items: int, topk_users: int, repeats: int) -> dict:
    import torch

    from dist_srec.data.item_vectors import VectorStore
    from dist_srec.eval.ranking import Exclusion, chunked_topk

    st = VectorStore(store)
    g = torch.Generator().manual_seed(1)
    u = torch.nn.functional.normalize(torch.randn(users, DIM, generator=g), dim=1)
    hist = torch.randint(1, st.num_items + 1, (users, 50), generator=g)
    base = _rss_mb("VmRSS")

    def scan() -> None:
        for i in range(0, users, topk_users):
            ex = Exclusion.from_history(hist[i : i + topk_users])
            chunked_topk(u[i : i + topk_users], st.iter_chunks(chunk_items), k, exclude=ex)

    t = time_it(scan, repeats=repeats, warmup=1)
    return {"users_per_s": users / t["median_s"], "scan_s": t["median_s"], "rss_before_scan_mb": base,
            "peak_rss_mb": _rss_mb()}  # fmt: skip


def _child_real(a: dict) -> list[dict]:
    import numpy as np
    import torch

    from dist_srec.data.item_vectors import StoreLayout
    from dist_srec.inference.batch_jobs import CatalogJobConfig, LocalRunner, ensure_store
    from dist_srec.inference.encode import checkpoint_identity
    from dist_srec.inference.worker import CatalogWorker, ScanConfig

    scan = ScanConfig(batch_items=a["batch_items"], chunk_items=a["chunk_items"], topk_users=a["topk_users"])
    ident = checkpoint_identity(a["ckpt"], a["data"])
    worker = CatalogWorker(a["ckpt"], a["data"], ident, scan)
    m = min(a["encode_items"] or ident.num_items, ident.num_items)
    t0 = time.perf_counter()
    with torch.no_grad():
        for lo in range(1, m + 1, scan.batch_items):
            worker.model.encode_items(torch.arange(lo, min(lo + scan.batch_items, m + 1)))
    enc_s = time.perf_counter() - t0
    store = Path(a["scratch"]) / f"real-{ident.heads_key}-float16"
    cfg = CatalogJobConfig(ckpt=a["ckpt"], data=a["data"], store=str(store), scan=scan, progress=False,
                           layout=StoreLayout(dtype="float16", shard_rows=SHARD_ROWS))  # fmt: skip
    t0 = time.perf_counter()
    ensure_store(cfg, ident, LocalRunner(cfg, ident, worker))  # reused across runs
    build_s = time.perf_counter() - t0
    users = np.arange(1, min(a["real_users"], worker.cat.num_users) + 1)
    t0 = time.perf_counter()
    vecs = worker.user_vectors(users)
    user_s = time.perf_counter() - t0
    t = time_it(lambda: worker.topk(vecs, users, a["k"], str(store)), repeats=3, warmup=1)
    label = Path(worker.cat.root).name
    common = {"n_items": ident.num_items, "k": a["k"], "peak_rss_mb": _rss_mb()}
    return [
        {**common, "row": f"{label}: encode items (LLM + item head)", "count": m, "seconds": enc_s,
         "per_s": m / enc_s, "batch": scan.batch_items, "store_build_s": build_s},
        {**common, "row": f"{label}: encode users (LLM + user head)", "count": len(users), "seconds": user_s,
         "per_s": len(users) / user_s, "batch": scan.batch_users},
        {**common, "row": f"{label}: top-K over the store (history excluded)", "count": len(users),
         "seconds": t["median_s"], "per_s": len(users) / t["median_s"], "batch": scan.topk_users},
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------- driver
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="100000,1000000,10000000", help="synthetic catalog sizes ('' = none)")
    p.add_argument("--users", type=int, default=1024, help="synthetic: users ranked per scan")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--chunk-items", type=int, default=65536)
    p.add_argument("--topk-users", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--scratch", default=str(Path.home() / ".cache" / "dist-srec" / "bench-catalog"))
    p.add_argument("--ckpt", help="a trained LLM-SRec checkpoint (e.g. on ML-1M) for the real rows")
    p.add_argument("--data", help="prepared data dir (default: the checkpoint's)")
    p.add_argument("--encode-items", type=int, default=0, help="real: items timed through the LLM (0 = all)")
    p.add_argument("--real-users", type=int, default=256, help="real: users encoded and ranked")
    p.add_argument("--batch-items", type=int, default=64)
    p.add_argument("--name", default="catalog", help="results/<name>.{json,md}")
    p.add_argument("--child", choices=["topk", "real"], help=argparse.SUPPRESS)
    p.add_argument("--args", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        kw = json.loads(a.args)
        print(json.dumps(_child_topk(**kw) if a.child == "topk" else _child_real(kw)))
        return
    scratch, me = Path(a.scratch).expanduser(), str(Path(__file__).resolve())
    rows = []
    for n in [int(s) for s in a.sizes.split(",") if s.strip()]:
        t0 = time.perf_counter()
        store = synthetic_store(scratch / f"synthetic-{n}-fp16", n)
        prep_s = time.perf_counter() - t0
        kw = {"store": str(store), "users": a.users, "k": a.k, "chunk_items": a.chunk_items,
              "topk_users": a.topk_users, "repeats": a.repeats}  # fmt: skip
        r = run_child([me, "--child", "topk", "--args", json.dumps(kw)])
        gb = sum(f.stat().st_size for f in store.glob("shard-*.npy")) / 1e9
        rows.append({"row": "synthetic top-K", "n_items": n, "count": a.users, "k": a.k, "per_s": r["users_per_s"],
                     "seconds": r["scan_s"], "batch": a.topk_users, "peak_rss_mb": r["peak_rss_mb"],
                     "rss_before_scan_mb": r["rss_before_scan_mb"], "store_gb": gb, "store_ready_s": prep_s})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    if a.ckpt:
        kw = {"ckpt": a.ckpt, "data": a.data, "encode_items": a.encode_items, "real_users": a.real_users,
              "k": a.k, "batch_items": a.batch_items, "chunk_items": a.chunk_items, "topk_users": a.topk_users,
              "scratch": str(scratch)}  # fmt: skip
        for r in run_child([me, "--child", "real", "--args", json.dumps(kw)]):
            rows.append(r)
            print(json.dumps(r), flush=True)
    settings = {k: v for k, v in vars(a).items() if k not in ("child", "args")}
    cols = ["row", "n_items", "count", "k", "batch", "seconds", "per_s", "peak_rss_mb", "rss_before_scan_mb",
            "store_gb"]  # fmt: skip
    md = (f"# Catalog-scale top-K and encoding ({machine()['date']})\n\n"
          f"Settings: `{json.dumps(settings)}`; 128-d fp16 stores, shards of {SHARD_ROWS} rows; `per_s` is "
          "users/s for top-K rows and items or users/s for encode rows; RSS is the child process's peak.\n\n"
          + markdown_table(rows, cols))  # fmt: skip
    js, mdp = write_results(a.name, {"settings": settings, "machine": machine(), "rows": rows}, md)
    print(f"wrote {js} and {mdp}")


if __name__ == "__main__":
    main()
