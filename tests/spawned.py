"""The end of an `mp.spawn`ed worker that ran a gloo process group."""

from __future__ import annotations

import os
import sys

import torch.distributed as dist


def finish_worker(ok: bool) -> None:
    """Destroy the process group. A worker that succeeded then leaves without interpreter shutdown
    (`os._exit(0)`): gloo's threads can abort that shutdown with SIGABRT ("terminate called without an
    active exception"), which `mp.spawn` reports as a failed worker after its work was done. A worker
    that failed keeps its exception, which `mp.spawn` reports."""
    dist.destroy_process_group()
    if ok:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
