"""CLI of serving: `dist-srec encode-catalog` and `dist-srec recommend-batch` (flags -> configs)."""

from __future__ import annotations

import argparse
from typing import Any

from dist_srec.cluster.ray_catalog import RayCatalogConfig
from dist_srec.data.item_vectors import DTYPES, StoreLayout
from dist_srec.inference.batch_jobs import BatchRecConfig, CatalogJobConfig, encode_catalog, recommend_batch
from dist_srec.inference.worker import ScanConfig


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="LLM-SRec checkpoint (train OUT/best)")
    p.add_argument("--data", help="prepared data dir (default: the checkpoint's)")
    p.add_argument("--dtype", default="float16", choices=sorted(DTYPES), help="stored vector dtype")
    p.add_argument("--shard-rows", type=int, default=65536, help="items per store shard file")
    p.add_argument("--batch-items", type=int, default=256, help="items per LLM forward")
    p.add_argument("--device", default="cpu", help="local runs: torch device of the model and the scan")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("Ray (split across actors; default: this process)")
    g.add_argument("--ray-workers", type=int, default=0, help="N > 0: N Ray actors, one model each")
    g.add_argument("--gpu", action="store_true", help="one GPU per actor")
    g.add_argument("--cpus-per-worker", type=float, default=1.0)
    g.add_argument("--address", help="Ray cluster address ('auto': the running one)")
    g.add_argument("--local-cpus", type=int, help="num_cpus of a local cluster this command starts")


def add_serve_commands(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "encode-catalog", help="encode the item catalog into a sharded vector store (resumable)"
    )
    _common(e)
    e.add_argument("--out", help="store dir (default: <run dir>/cache/vectors-<heads key>-<dtype>)")
    e.set_defaults(func=encode_catalog_cli)

    r = sub.add_parser("recommend-batch", help="top-K for many users into parquet parts (resumable)")
    _common(r)
    r.add_argument("--users", required=True, help="'all', or a text file of user ids (one a line)")
    r.add_argument("--k", type=int, default=100)
    r.add_argument(
        "--out", required=True, help="output dir (parquet parts, _job.json, _manifest.json, _SUCCESS)"
    )
    r.add_argument("--store", help="vector store dir (default: <run dir>/cache/vectors-<heads key>-<dtype>)")
    r.add_argument("--users-per-shard", type=int, default=10000, help="users per output part")
    r.add_argument("--batch-users", type=int, default=16, help="users per LLM forward")
    r.add_argument("--topk-users", type=int, default=256, help="users per catalog scan")
    r.add_argument("--chunk-items", type=int, default=65536, help="items per scored chunk")
    r.set_defaults(func=recommend_batch_cli)


def _parts(args: argparse.Namespace) -> dict[str, Any]:
    scan = {"batch_items": args.batch_items, "device": args.device}
    for name in ("batch_users", "topk_users", "chunk_items"):
        if hasattr(args, name):
            scan[name] = getattr(args, name)
    return {"ckpt": args.ckpt, "data": args.data, "progress": not args.no_progress, "scan": ScanConfig(**scan),
            "layout": StoreLayout(dtype=args.dtype, shard_rows=args.shard_rows)}  # fmt: skip


def _ray(args: argparse.Namespace) -> Any:
    if args.ray_workers <= 0:
        return None

    return RayCatalogConfig(num_workers=args.ray_workers, use_gpu=args.gpu, cpus_per_worker=args.cpus_per_worker,
                            address=args.address, local_cpus=args.local_cpus)  # fmt: skip


def encode_catalog_cli(args: argparse.Namespace) -> int:

    store = encode_catalog(CatalogJobConfig(store=args.out, **_parts(args)), _ray(args))
    print(f"vector store {store.root}: {store.num_items} items x {store.dim} ({store.dtype}), "
          f"{len(store.manifest['shards'])} shards")  # fmt: skip
    return 0


def recommend_batch_cli(args: argparse.Namespace) -> int:
    cfg = BatchRecConfig(out=args.out, users=args.users, k=args.k, store=args.store,
                         users_per_shard=args.users_per_shard, **_parts(args))  # fmt: skip
    m = recommend_batch(cfg, _ray(args))
    print(f"recommend-batch: {m['num_users']} users, top {m['k']}, {m['total_rows']} rows in "
          f"{len(m['parts'])} parts under {args.out} (store {m['store']})")  # fmt: skip
    return 0
