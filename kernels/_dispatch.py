"""The one rule for choosing an op's Triton path (Triton runs on CPU only under `TRITON_INTERPRET=1`).

Every op's `__init__.py` asks `use_triton(tensor)` and imports its `triton_impl` only when the answer is
yes, so the package imports and runs without triton installed.

Which path runs, in order of precedence:

1. `force_kernel_path("torch" | "triton" | "auto")`, a context manager (tests, benchmarks);
2. the environment variable `DIST_SREC_KERNELS` = `torch` | `triton` | `auto` (default `auto`);
3. `auto`: the torch reference, on CPU and on CUDA alike; Triton only when the interpreter is on
   (`TRITON_INTERPRET=1`, the kernel tests) and triton imports. The compiled Triton kernels have not
   yet run on a GPU in this project, so on CUDA they are opt-in (`DIST_SREC_KERNELS=triton`) until a
   GPU run of the kernel tests is committed (`benchmarks/gpu_check.sh`).

Which path an op ran is logged once per process and op.

`torch` always runs the reference. `triton` always runs the kernels and fails loudly when they cannot
run: triton missing, or a CPU tensor while triton was imported without its interpreter.

The interpreter is a property of the process, not of a call: `TRITON_INTERPRET=1` must be set before
triton is first imported (triton decorates its own `tl.sum` & co. at import time, and reads the knob
again lazily inside launches). `triton_interpreting()` reports what the imported triton actually does.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Literal, cast

from torch import Tensor

KernelPath = Literal["auto", "torch", "triton"]
KERNEL_PATHS: tuple[KernelPath, ...] = ("auto", "torch", "triton")
ENV_VAR = "DIST_SREC_KERNELS"
log = logging.getLogger(__name__)

_forced: ContextVar[KernelPath | None] = ContextVar("dist_srec_kernel_path", default=None)


def _check_path(path: str, source: str) -> KernelPath:
    if path not in KERNEL_PATHS:
        raise ValueError(f"{source}={path!r}: expected one of {', '.join(KERNEL_PATHS)}")
    return cast(KernelPath, path)


def kernel_path() -> KernelPath:
    """The path in force: the innermost `force_kernel_path`, else `$DIST_SREC_KERNELS`, else `auto`."""
    forced = _forced.get()
    if forced is not None:
        return forced
    return _check_path(os.environ.get(ENV_VAR, "auto").strip().lower() or "auto", ENV_VAR)


@contextmanager
def force_kernel_path(path: KernelPath) -> Iterator[None]:
    """Run the enclosed calls on `path` ("torch", "triton" or "auto"), whatever the environment says."""
    token = _forced.set(_check_path(path, "force_kernel_path"))
    try:
        yield
    finally:
        _forced.reset(token)


@functools.cache
def triton_available() -> bool:
    """True if `import triton` succeeds (imports it, once; a blocked or broken install gives False)."""
    try:
        if importlib.util.find_spec("triton") is None:
            return False
        # deferred: triton is optional and must load after TRITON_INTERPRET is set
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreter_requested() -> bool:
    """`TRITON_INTERPRET=1` in the environment (what `auto` consults for CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_interpreting() -> bool:
    """True if the imported triton runs kernels in its CPU interpreter (it was imported with it on)."""
    if not triton_available():
        return False
    import triton.language as tl  # deferred: triton is optional and must load after TRITON_INTERPRET is set
    from triton.runtime.interpreter import (
        InterpretedFunction,  # deferred: triton is optional and must load after TRITON_INTERPRET is set
    )

    return isinstance(tl.sum, InterpretedFunction)


def use_triton(tensor: Tensor, op: str = "op") -> bool:
    """Whether `op` called on `tensor` runs its Triton kernels (see the module docstring)."""
    path = kernel_path()
    chosen = _choose(path, tensor)
    if (op, chosen) not in _logged:
        _logged.add((op, chosen))
        why = {"torch": "forced", "triton": "forced", "auto": "auto: Triton is opt-in on CUDA"}[path]
        log.info("kernel %s: %s path on %s (%s)", op, "Triton" if chosen else "torch reference",
                 tensor.device.type, why)  # fmt: skip
    return chosen


_logged: set[tuple[str, bool]] = set()


def _choose(path: KernelPath, tensor: Tensor) -> bool:
    if path == "torch":
        return False
    if path == "auto":
        return interpreter_requested() and not tensor.is_cuda and triton_available()
    if not triton_available():
        raise RuntimeError(f"{ENV_VAR}=triton (or force_kernel_path) but triton does not import")
    if not tensor.is_cuda and not triton_interpreting():
        raise RuntimeError(
            "the Triton path was forced for a CPU tensor, but triton was imported without its "
            "interpreter: set TRITON_INTERPRET=1 before triton is first imported"
        )
    return True
