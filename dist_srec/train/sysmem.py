"""Host-memory retention of glibc's allocator, which otherwise inflates every rank's RSS.

glibc serves a request of at least `M_MMAP_THRESHOLD` bytes with its own `mmap`, returned to the OS on
free. The threshold is dynamic by default: freeing such a chunk raises it to that chunk's size (up to
32 MiB on 64-bit), so afterwards multi-MiB tensors come from the heap arenas, whose freed memory is
kept for reuse and fragments. A frozen-LLM step allocates and frees many such tensors per layer
(activations, and under ZeRO-3 each layer's gathered weights), and the retained heap showed up as
resident memory: with SmolLM2 (bf16, 20 x 160 tokens, activation checkpointing, one rank) the peak RSS
of a forward + backward was 1.47 GB at ZeRO stage 0 and 2.45 GB at stage 3 with the default, 1.06 and
1.20 GB with a fixed 128 KiB threshold. The price: every large allocation then faults in fresh pages,
and the passes took 37% longer (`benchmarks/results/lm_memory.md`). Hence opt-in
(`SRecRunConfig.mmap_threshold_bytes`, `dist-srec train --mmap-threshold-bytes`).

`mallopt` takes effect immediately for later allocations, so it is called at the start of a training
run inside every process (Ray Train workers included), not through environment variables that would
have to be set before the interpreter starts. A no-op where libc is not glibc (macOS, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

from dist_srec.errors import ConfigError

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_GLIBC_MAX_MMAP_THRESHOLD = 32 << 20  # HEAP_MAX_SIZE / 2 on 64-bit: mallopt refuses larger values


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 (present only in glibc)
    except (OSError, AttributeError):
        return None
    return libc


def check_mmap_threshold(nbytes: int | None) -> None:
    """ConfigError unless `nbytes` is None or in [0, 32 MiB] (glibc's limit)."""
    if nbytes is not None and not 0 <= nbytes <= _GLIBC_MAX_MMAP_THRESHOLD:
        raise ConfigError(
            f"config field 'mmap_threshold_bytes': must be in [0, {_GLIBC_MAX_MMAP_THRESHOLD}], got {nbytes}"
        )


def fix_mmap_threshold(nbytes: int | None) -> bool:
    """Fix glibc's mmap threshold (and trim threshold) at `nbytes`; None leaves the allocator alone.

    Returns True when the setting took effect, False where it cannot apply (not glibc). Raises
    ConfigError for a value outside [0, 32 MiB].
    """
    check_mmap_threshold(nbytes)
    if nbytes is None:
        return False
    libc = _glibc()
    if libc is None:
        log.info("not glibc: mmap threshold left to the platform allocator")
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, nbytes) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, nbytes) == 1
    if not ok:
        log.warning("mallopt refused the mmap threshold %d", nbytes)
    return ok
