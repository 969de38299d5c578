"""Joining or starting Ray, the same way for training and for the batch jobs.

`address` "auto" joins the running cluster, an explicit address joins that one; with none, a job run
under `ray job submit` joins through `RAY_ADDRESS`, and otherwise a local cluster is started here
(`local_cpus` CPUs, a 1 GB object store, no dashboard).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any


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
