"""The one rule for choosing an op's Triton path (see ../shared/STACK.md, "Triton on CPU").

Triton is used when it imports and the tensor is on CUDA, or when the interpreter is on
(`TRITON_INTERPRET=1`, which must be set before triton is first imported). Otherwise the torch
reference runs. triton is never imported here: only looked up.
"""

from __future__ import annotations

import importlib.util
import os

from torch import Tensor


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def use_triton(tensor: Tensor) -> bool:
    """True if a Triton kernel could run on `tensor`: triton installed and (CUDA or interpreter on)."""
    return (tensor.is_cuda or os.environ.get("TRITON_INTERPRET") == "1") and triton_available()
