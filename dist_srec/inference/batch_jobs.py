"""`dist-srec encode-catalog` and `dist-srec recommend-batch`: the driver side.

    dist-srec encode-catalog --ckpt runs/srec/best [--out STORE] [--dtype float16] [--shard-rows 65536]
    dist-srec recommend-batch --ckpt runs/srec/best --users users.txt|all --k 100 --out recs/ [--ray-workers 4]

recommend-batch:
  1. the vector store of the checkpoint (`--store`, default `<run>/cache/vectors-<heads key>-<dtype>`):
     opened if finished, else encoded (resuming a partial one);
  2. users (a text file of original user ids, one a line, blank lines and `#` comments ignored; or
     `all`) cut into parts of `users_per_shard`; `OUT/_job.json` pins the run's settings, so a rerun with
     other settings is refused instead of mixing parts;
  3. every part not yet written: encode its users, exact top-k over the store (history excluded),
     `OUT/part-NNNNNN.parquet` written atomically;
  4. `OUT/_manifest.json` (job + per-part rows) and an empty `OUT/_SUCCESS` (parquet readers skip
     `_`-files: `pyarrow.parquet.read_table(OUT)` reads every part).

Work goes through a runner: `LocalRunner` (this process) or, with `--ray-workers N`, Ray actors
(`dist_srec.cluster.ray_catalog`), one model per actor, shards and parts split by `assign_shards`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from dist_srec.data.catalog import Catalog
from dist_srec.data.item_vectors import StoreIdentity, StoreLayout, VectorStore, finalize
from dist_srec.errors import ConfigError, DataError
from dist_srec.inference.encode import checkpoint_identity, default_store_dir, prepare_store
from dist_srec.inference.recommend import unknown_key_error
from dist_srec.inference.worker import CatalogWorker, ScanConfig
from dist_srec.io import read_json, sha256_file, write_json_atomic
from dist_srec.storage import local_checkpoint
from dist_srec.train.checkpoint import model_sha256

JOB_FORMAT = "dist-srec/recommend-batch"


@dataclass(kw_only=True)
class CatalogJobConfig:
    """A checkpoint, its catalog and its vector store."""

    ckpt: str
    data: str | None = None
    """Prepared data dir (default: the checkpoint's)."""
    store: str | None = None
    """Vector store dir (default: `<run dir>/cache/vectors-<heads key>-<dtype>`)."""
    layout: StoreLayout = field(default_factory=StoreLayout)
    scan: ScanConfig = field(default_factory=ScanConfig)
    progress: bool = True


@dataclass(kw_only=True)
class BatchRecConfig(CatalogJobConfig):
    """`recommend-batch`: top-k for many users, written as parquet parts."""

    out: str
    users: str = "all"
    """`all`, or a text file with one original user id per line."""
    k: int = 100
    users_per_shard: int = 10000
    """Users per output part (the unit of resumption and of work split)."""

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError(f"config field 'k': must be >= 1, got {self.k}")
        if self.users_per_shard < 1:
            raise ConfigError(f"config field 'users_per_shard': must be >= 1, got {self.users_per_shard}")
        if self.users != "all" and not Path(self.users).is_file():
            raise ConfigError(f"config field 'users': {self.users} is neither 'all' nor a file")


class Runner(Protocol):
    """Where the work runs: this process, or Ray actors."""

    def encode(self, root: str, manifest: dict[str, Any], shards: list[int]) -> None: ...

    def recommend(self, parts: list[tuple[str, np.ndarray, int, str]]) -> None: ...


class LocalRunner:
    """All work in this process, on one `CatalogWorker` (the model is loaded on first use)."""

    def __init__(self, cfg: CatalogJobConfig, identity: StoreIdentity, worker: CatalogWorker | None = None):
        self.cfg, self.identity = cfg, identity
        self._worker = worker

    @property
    def worker(self) -> CatalogWorker:
        if self._worker is None:
            self._worker = CatalogWorker(self.cfg.ckpt, self.cfg.data, self.identity, self.cfg.scan)
        return self._worker

    def encode(self, root: str, manifest: dict[str, Any], shards: list[int]) -> None:
        self.worker.encode(root, manifest, shards, progress=self.cfg.progress)

    def recommend(self, parts: list[tuple[str, np.ndarray, int, str]]) -> None:
        for part in tqdm(parts, desc="recommend (user parts)", unit="part", disable=not self.cfg.progress):
            self.worker.recommend_part(*part)


class RunnerSource(Protocol):
    """Where the work runs when not in this process: `open_runner` starts the workers and yields their
    `Runner`, stopping them on exit (`dist_srec.cluster.ray_catalog.RayCatalogConfig` is one)."""

    def open_runner(self, cfg: Any, identity: StoreIdentity) -> contextlib.AbstractContextManager[Runner]: ...


@contextlib.contextmanager
def make_runner(
    cfg: CatalogJobConfig, identity: StoreIdentity, ray: RunnerSource | None = None
) -> Iterator[Runner]:
    """`LocalRunner`, or the runner of `ray` (e.g. Ray actors), started and stopped here."""
    if ray is None:
        yield LocalRunner(cfg, identity)
        return
    with ray.open_runner(cfg, identity) as runner:
        yield runner


def ensure_store(cfg: CatalogJobConfig, identity: StoreIdentity, runner: Runner) -> Path:
    """The finished store's directory: encoded (or the rest of it) through `runner` when needed."""
    root = Path(cfg.store) if cfg.store else default_store_dir(cfg.ckpt, identity, cfg.layout.dtype)
    manifest, pending = prepare_store(root, identity, cfg.layout)
    if not manifest["complete"]:
        runner.encode(str(root), manifest, pending)
        finalize(root, manifest)
    return root


def encode_catalog(cfg: CatalogJobConfig, ray: RunnerSource | None = None) -> VectorStore:
    """Encode (or finish, or just open) the checkpoint's vector store."""
    identity = checkpoint_identity(cfg.ckpt, cfg.data)
    with make_runner(cfg, identity, ray) as runner:
        root = ensure_store(cfg, identity, runner)
    return VectorStore(root, identity)


def read_users(path: str | Path, user_keys: list[str]) -> np.ndarray:
    """User ids [P] of a text file of original user keys (one a line; blanks and `#` comments skipped);
    an unknown key is a DataError naming the file and line, with close matches."""

    index = {key: uid for uid, key in enumerate(user_keys) if uid}
    ids = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            key = line.split("#", 1)[0].strip()
            if not key:
                continue
            if key not in index:
                raise unknown_key_error(key, user_keys[1:], "user", path=path, line=line_no)
            ids.append(index[key])
    if not ids:
        raise DataError("the users file names no users", path=path)
    return np.asarray(ids, dtype=np.int64)


def _job(cfg: BatchRecConfig, identity: StoreIdentity, users: np.ndarray) -> dict[str, Any]:
    """What the output directory's parts depend on; a rerun must match it exactly."""
    n_parts = -(-len(users) // cfg.users_per_shard)
    return {
        "format": JOB_FORMAT, "checkpoint_sha256": model_sha256(cfg.ckpt), "heads_key": identity.heads_key,
        "catalog_sha256": identity.catalog_sha256, "k": cfg.k,
        "users": "all" if cfg.users == "all" else str(Path(cfg.users).resolve()),
        "users_sha256": None if cfg.users == "all" else sha256_file(cfg.users), "num_users": len(users),
        "users_per_shard": cfg.users_per_shard, "dtype": cfg.layout.dtype,
        "parts": [f"part-{p:06d}.parquet" for p in range(n_parts)],
    }  # fmt: skip


def check_or_write_job(out: Path, job: dict[str, Any]) -> None:
    """Write OUT/_job.json, or check that an existing one describes the same run."""
    path = out / "_job.json"
    if path.is_file():
        old = read_json(path)
        for name, want in job.items():
            if old.get(name) != want:
                raise DataError(f"{out} holds a batch run with {name}={old.get(name)!r}, this run has {want!r} "
                                "(use another --out)", path=path, field=name)  # fmt: skip
        return
    if out.is_dir() and any(out.iterdir()):
        raise DataError("the output directory is not empty and holds no recommend-batch run", path=out)
    write_json_atomic(path, job)


def recommend_batch(cfg: BatchRecConfig, ray: RunnerSource | None = None) -> dict[str, Any]:
    """Top-k for every selected user into OUT/part-*.parquet (resumable per part); returns the manifest."""

    identity = checkpoint_identity(cfg.ckpt, cfg.data)
    if cfg.k > identity.num_items:
        raise DataError(f"k={cfg.k} is larger than the catalog ({identity.num_items} items)", field="k")
    cat = Catalog.load(cfg.data or read_json(local_checkpoint(cfg.ckpt) / "config.json")["catalog"]["data"])
    users = np.arange(1, cat.num_users + 1) if cfg.users == "all" else read_users(cfg.users, cat.user_keys)
    out = Path(cfg.out)
    job = _job(cfg, identity, users)
    check_or_write_job(out, job)
    if (out / "_SUCCESS").is_file():
        return read_json(out / "_manifest.json")
    with make_runner(cfg, identity, ray) as runner:
        store = ensure_store(cfg, identity, runner)
        step = cfg.users_per_shard
        todo = [(str(out / name), users[p * step : (p + 1) * step], cfg.k, str(store))
                for p, name in enumerate(job["parts"]) if not (out / name).is_file()]  # fmt: skip
        runner.recommend(todo)
    rows = {name: pq.read_metadata(out / name).num_rows for name in job["parts"]}
    manifest = {**job, "store": str(store), "rows": rows, "total_rows": sum(rows.values())}
    write_json_atomic(out / "_manifest.json", manifest)
    (out / "_SUCCESS").touch()
    return manifest
