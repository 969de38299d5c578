"""Small I/O helpers: atomic writes, their recovery after a kill, content hashes, and the exclusive lock
of an output directory."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dist_srec.errors import OutputBusyError

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, streamed in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    Works for files and directories. A crash leaves either the old `path` or nothing, never a
    half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(target, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def recover_atomic(path: str | os.PathLike) -> bool:
    """Finish an `atomic_path` directory swap that a kill interrupted; True if it recovered one.

    The swap renames `path` to `.<name>.old`, then the new copy onto `path`. A kill between the two
    leaves only `.<name>.old`: it is the last complete version, so it is renamed back.
    """
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if path.exists() or not old.is_dir():
        return False
    os.replace(old, path)
    return True


def clean_stale_temporaries(path: str | os.PathLike) -> int:
    """Delete the `.<name>.*.tmp` folders that killed `atomic_path` writes of `path` left; returns how
    many. Call it only while holding the output's lock (no write of `path` can be in flight)."""
    path = Path(path)
    stale = list(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.is_dir() else []
    for tmp in stale:
        shutil.rmtree(tmp, ignore_errors=True)
    return len(stale)


@contextlib.contextmanager
def exclusive_output(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive lock on the output `path` (a directory, existing or not) for the block.

    The lock is `flock` on `.<name>.lock` beside `path`, so the kernel releases it when the holder
    dies (no stale locks after `kill -9`). The file records the holder (pid, host, start time, `what`);
    a second writer gets `OutputBusyError` naming it.
    """
    path = Path(path)
    lock = path.with_name(f".{path.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown holder"
            raise OutputBusyError(f"{path} is being written by another run ({holder}); wait for it to end, "
                               "or use another output directory") from None  # fmt: skip
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        os.pwrite(fd, f"{what}: pid {os.getpid()} on host {socket.gethostname()} since {stamp}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


RUN_FILE = "config.yaml"
"""The resolved run config a training run writes into its output (`--config OUT/config.yaml` replays it)."""


def write_run_file(path: str | os.PathLike, config: Any) -> None:
    """Write a run config (a dict of plain values, tuples allowed) as YAML, atomically."""
    import yaml  # deferred: only runs that write a run file need it

    plain = json.loads(json.dumps(config, default=str))  # tuples -> lists, paths -> strings
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(plain, sort_keys=False))
