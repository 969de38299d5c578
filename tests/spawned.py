"""For `mp.spawn`ed workers that run a gloo process group: a free port for their rendezvous, and the
worker's end."""

from __future__ import annotations

import os
import socket
import sys

import torch.distributed as dist


def free_port() -> int:
    """A TCP port on 127.0.0.1 that the OS reports free now: a fixed or pid-derived port can still be
    held (or in TIME_WAIT) from an earlier test, and gloo's rendezvous then fails on one rank."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
