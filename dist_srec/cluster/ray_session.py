"""Joining or starting Ray, the same way for training and for the batch jobs.

`address` "auto" joins the running cluster, an explicit address joins that one; with none, a job run
under `ray job submit` joins through `RAY_ADDRESS`, and otherwise a local cluster is started here
(`local_cpus` CPUs, a 1 GB object store, no dashboard).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dist_srec.errors import ConfigError


@dataclass(kw_only=True)
class RayWorkers:
    """How many Ray workers, with which resources, on which cluster: what training (`RayConfig`) and the
    batch jobs (`RayCatalogConfig`) share."""

    num_workers: int = 2
    use_gpu: bool = False
    """One GPU per worker (training: nccl; batch jobs: the model and the top-K scan on it)."""
    cpus_per_worker: float = 1.0
    address: str | None = None
    """Ray cluster address ("auto": the running cluster; None: `RAY_ADDRESS` when set, as under
    `ray job submit`, else a new local cluster)."""
    local_cpus: int | None = None
    """num_cpus of the local cluster started when there is none to join (None: Ray's default)."""

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ConfigError(f"config field 'num_workers': must be >= 1, got {self.num_workers}")
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"config field 'cpus_per_worker': must be > 0, got {self.cpus_per_worker}")


@contextlib.contextmanager
def ray_session(address: str | None, local_cpus: int | None = None, **init: Any) -> Iterator[Any]:
    """Yield the `ray` module connected to a cluster (see the module docstring); shut down only a
    session this call started. `init` goes to `ray.init` when a local cluster is started."""
    import ray  # deferred: Ray takes seconds to import; only the Ray paths need it

    started = not ray.is_initialized()
    if started:
        local = address is None and not os.environ.get("RAY_ADDRESS")
        own: dict[str, Any] = {"include_dashboard": False}
        if local_cpus:
            own |= {"num_cpus": local_cpus, "object_store_memory": int(1e9)}
        ray.init(address=address, **({**own, **init} if local else {}))
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()
