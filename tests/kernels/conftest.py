"""Kernel tests: run the Triton kernels in triton's CPU interpreter, without leaking it elsewhere.

The interpreter is a property of the process: `TRITON_INTERPRET=1` must be set when triton is first
imported (triton decorates its own `tl.sum` & co. then), and triton reads the knob again lazily inside
launches. But the dispatcher's `auto` rule also reads `TRITON_INTERPRET`, so leaving it in
`os.environ` would send every other test of the session (losses, models, training) through the slow
interpreter, and into the subprocesses they start. So, on a machine without CUDA, this file

1. sets `TRITON_INTERPRET=1`, imports triton (and every kernel module), and pins the interpreter on
   with triton's own knob (`triton.knobs.runtime.interpret = True`, an in-process override);
2. restores `os.environ`, so `auto` keeps choosing torch in every other test;
3. kernel tests select the Triton path explicitly with `force_kernel_path("triton")` (the fixture
   `triton_path`).

On a CUDA machine nothing is set: the same tests run the compiled kernels on the `device` fixture.
If triton was already imported without the interpreter (e.g. by a plugin), the Triton tests are skipped
with that reason rather than failing on "0 active drivers".
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = importlib.util.find_spec("triton") is not None
SKIP_REASON = ""

if HAS_TRITON and not HAS_CUDA:
    _prev = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton

        triton.knobs.runtime.interpret = True
        import dist_srec.kernels.distill_loss.triton_impl
        import dist_srec.kernels.seq_embed.triton_impl
        import dist_srec.kernels.seq_lookup.triton_impl  # noqa: F401
    finally:
        if _prev is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = _prev
    from dist_srec.kernels._dispatch import triton_interpreting

    if not triton_interpreting():
        SKIP_REASON = "triton was imported before tests/kernels/conftest.py could turn its interpreter on"
elif not HAS_TRITON:
    SKIP_REASON = "triton is not installed"

DEVICE = "cuda" if HAS_CUDA else "cpu"


@pytest.fixture
def device() -> str:
    """Where the kernels run: CUDA when present, else the CPU interpreter."""
    return DEVICE


@pytest.fixture
def triton_path() -> Iterator[None]:
    """Force the Triton path for the test (skip, with the reason, where it cannot run)."""
    if SKIP_REASON:
        pytest.skip(SKIP_REASON)
    from dist_srec.kernels._dispatch import force_kernel_path

    with force_kernel_path("triton"):
        yield


@pytest.fixture
def torch_path() -> Iterator[None]:
    from dist_srec.kernels._dispatch import force_kernel_path

    with force_kernel_path("torch"):
        yield
