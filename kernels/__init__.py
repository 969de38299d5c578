"""Custom ops, shipped as `dist_srec.kernels` (this folder is mapped in pyproject.toml).

One folder per op: `reference.py` (pure torch; the CPU production path and the test oracle),
`triton_impl.py` (Triton kernels + launcher + autograd.Function) and a dispatching `__init__.py`
that imports triton lazily.
"""
