"""Catalog encoding and batch recommendation on Ray actors.

    driver:  ray.init (a running cluster, `RAY_ADDRESS` under `ray job submit`, or a local one)
             W actors = ray.remote(CatalogWorker)   each loads the model once (CPU or one GPU)
             encode:    actor r gets assign_shards(pending store shards, r, W), one call per shard
             recommend: actor r gets assign_shards(pending user parts,  r, W), one call per part
             the driver alone writes the store's and the output's manifests

Workers write shard and part files themselves (atomically), so the store and output directories must
be on storage every node sees (any path on a single machine; shared storage on a cluster). Run as a
Ray job:

    python launch/submit.py --address http://HEAD:8265 -- python -m dist_srec.cli recommend-batch \\
        --ckpt /shared/runs/srec/best --users all --k 100 --out /shared/recs --ray-workers 8 --gpu --address auto
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from dist_srec.cluster.ray_session import RayWorkers, ray_session
from dist_srec.data.item_vectors import StoreIdentity, assign_shards
from dist_srec.inference.worker import CatalogWorker


@dataclass(kw_only=True)
class RayCatalogConfig(RayWorkers):
    """The batch jobs' Ray actors: one model each (`RayWorkers`' fields)."""

    def open_runner(self, cfg: Any, identity: StoreIdentity) -> contextlib.AbstractContextManager[RayRunner]:
        """The batch jobs' `RunnerSource`: `ray_runner` with this config."""
        return ray_runner(cfg, identity, self)


class RayRunner:
    """A `dist_srec.inference.batch_jobs.Runner` over Ray actors; the driver shows progress per finished call."""

    def __init__(self, actors: list[Any], progress: bool):
        self.actors, self.progress = actors, progress

    def _run(self, method: str, calls: list[tuple], desc: str) -> list[Any]:
        import ray  # deferred: Ray takes seconds to import; only the Ray paths need it

        world = len(self.actors)
        refs = [getattr(actor, method).remote(*calls[i])
                for rank, actor in enumerate(self.actors)
                for i in assign_shards(range(len(calls)), rank, world)]  # fmt: skip
        out = []
        with tqdm(total=len(refs), desc=desc, disable=not self.progress) as bar:
            while refs:
                done, refs = ray.wait(refs, num_returns=1)
                out += ray.get(done)
                bar.update(len(done))
        return out

    def encode(self, root: str, manifest: dict[str, Any], shards: list[int]) -> None:
        self._run(
            "encode", [(root, manifest, [s]) for s in shards], f"encode catalog ({len(self.actors)} workers)"
        )

    def recommend(self, parts: list[tuple[str, np.ndarray, int, str]]) -> None:
        self._run("recommend_part", parts, f"recommend ({len(self.actors)} workers)")


@contextlib.contextmanager
def ray_runner(cfg: Any, identity: StoreIdentity, ray_cfg: RayCatalogConfig) -> Iterator[RayRunner]:
    """Start (or join) Ray, create the actors, yield their runner; stop what this started."""
    with ray_session(ray_cfg.address, ray_cfg.local_cpus) as ray:
        gpus = 1 if ray_cfg.use_gpu else 0
        scan = cfg.scan if not ray_cfg.use_gpu else type(cfg.scan)(**{**vars(cfg.scan), "device": "cuda"})
        actor_cls = ray.remote(num_cpus=ray_cfg.cpus_per_worker, num_gpus=gpus)(CatalogWorker)
        actors = [actor_cls.remote(cfg.ckpt, cfg.data, identity, scan) for _ in range(ray_cfg.num_workers)]
        try:
            yield RayRunner(actors, cfg.progress)
        finally:
            for a in actors:
                ray.kill(a)
