"""`dist-srec encode-catalog` and `recommend-batch`: catalog-scale batch jobs, in this process or on Ray
actors (`--ray.num_workers N`)."""

from __future__ import annotations

from jsonargparse import ArgumentParser, Namespace

from dist_srec.cli.command import Command, parser
from dist_srec.cluster.ray_catalog import RayCatalogConfig
from dist_srec.config import from_built
from dist_srec.inference.batch_jobs import BatchRecConfig, CatalogJobConfig, encode_catalog, recommend_batch


def _job_parser(cls: type, description: str, examples: list[str]) -> ArgumentParser:
    p = parser(description, examples, run_file=True)
    p.add_class_arguments(cls, None, fail_untyped=False)
    p.add_argument("--ray", type=RayCatalogConfig | None, default=None,
                   help="run on Ray actors (set any --ray.* field, e.g. --ray.num_workers 4); default: this process")  # fmt: skip
    return p


def _build(p: ArgumentParser, ns: Namespace, cls: type) -> tuple[object, RayCatalogConfig | None]:
    built = p.instantiate(ns)  # once: the job's config groups and the optional Ray actors' config
    return from_built(cls, built), built.ray


def _encode_parser() -> ArgumentParser:
    return _job_parser(CatalogJobConfig, "Encode the item catalog into a sharded vector store (resumable).", [
        "dist-srec encode-catalog --ckpt runs/srec/best",
        "dist-srec encode-catalog --ckpt runs/srec/best --layout.dtype bfloat16 --ray.num_workers 4",
    ])  # fmt: skip


def _encode(p: ArgumentParser, ns: Namespace) -> int:
    job, ray = _build(p, ns, CatalogJobConfig)
    store = encode_catalog(job, ray)
    print(f"vector store {store.root}: {store.num_items} items x {store.dim} ({store.dtype}), "
          f"{len(store.manifest['shards'])} shards")  # fmt: skip
    return 0


def _recommend_parser() -> ArgumentParser:
    return _job_parser(BatchRecConfig, "Top-K for many users into parquet parts (resumable).", [
        "dist-srec recommend-batch --ckpt runs/srec/best --users all --k 100 --out runs/recs",
        "dist-srec recommend-batch --ckpt /shared/srec/best --out /shared/recs --ray.num_workers 8 "
        "--ray.use_gpu true --ray.address auto",
    ])  # fmt: skip


def _recommend(p: ArgumentParser, ns: Namespace) -> int:
    job, ray = _build(p, ns, BatchRecConfig)
    m = recommend_batch(job, ray)
    print(f"recommend-batch: {m['num_users']} users, top {m['k']}, {m['total_rows']} rows in "
          f"{len(m['parts'])} parts under {job.out} (store {m['store']})")  # fmt: skip
    return 0


COMMANDS = [
    Command("encode-catalog", "encode the item catalog into a sharded vector store", _encode_parser, _encode),
    Command("recommend-batch", "top-K for many users into parquet parts", _recommend_parser, _recommend),
]
