"""Which path runs: the `auto` rule, the forcing switches, and running without triton at all."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dist_srec.kernels import _dispatch
from dist_srec.kernels._dispatch import force_kernel_path, kernel_path, use_triton
from dist_srec.kernels.distill_loss import distill_loss
from dist_srec.kernels.seq_embed import seq_embed
from dist_srec.kernels.seq_lookup import seq_lookup

ROOT = Path(__file__).resolve().parents[2]


def test_env_switch_and_context_override(monkeypatch) -> None:
    x = torch.zeros(1)
    monkeypatch.delenv(_dispatch.ENV_VAR, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert kernel_path() == "auto" and not use_triton(x)  # CPU tensor, interpreter off
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert use_triton(x) == _dispatch.triton_available()
    monkeypatch.setenv(_dispatch.ENV_VAR, "torch")
    assert kernel_path() == "torch" and not use_triton(x)
    with force_kernel_path("auto"):
        assert kernel_path() == "auto"
        with force_kernel_path("torch"):
            assert not use_triton(x)
        assert kernel_path() == "auto"
    assert kernel_path() == "torch"
    monkeypatch.setenv(_dispatch.ENV_VAR, "cuda")
    with pytest.raises(ValueError, match="DIST_SREC_KERNELS"):
        kernel_path()
    with pytest.raises(ValueError):
        force_kernel_path("fast").__enter__()  # type: ignore[arg-type]


def test_forced_paths_pick_the_implementation(triton_path, device) -> None:
    """Under the forced Triton path the autograd nodes are the kernels' Functions; under torch not."""

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, requires_grad=True)

    ids = torch.tensor([[20, 3, 21], [20, 20, 22]], device=device)
    table, rows, outs = torch.randn(23, 4, device=device), leaf(2, 4), leaf(2, 4)
    s2r = torch.tensor([0, 1, 0], device=device)
    u, item, pos = leaf(4, 8), leaf(5, 4), leaf(3, 4)
    lookup_ids = torch.tensor([[0, 1, 4]], device=device)

    def nodes() -> list[str]:
        return [
            type(seq_embed(ids, table, rows, s2r, outs, hist_id=20, out_ids=(21, 22)).grad_fn).__name__,
            type(distill_loss(u, u.flip(0)).mse.grad_fn).__name__,
            type(seq_lookup(lookup_ids, item, pos, 2.0).grad_fn).__name__,
        ]

    assert nodes() == ["SpliceFunctionBackward", "DistillLossFunctionBackward", "SeqLookupFunctionBackward"]
    with force_kernel_path("torch"):
        assert not any("Function" in n for n in nodes())


def _run_child(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full_env, cwd=ROOT
    )


BODY = """
    import torch
    from dist_srec.kernels import _dispatch
    from dist_srec.kernels._dispatch import force_kernel_path
    from dist_srec.kernels.distill_loss import distill_loss
    from dist_srec.kernels.seq_embed import seq_embed
    from dist_srec.models.sasrec import SASRec, SASRecConfig

    ids = torch.tensor([[20, 3, 21], [20, 20, 22]])
    rows = torch.randn(2, 4, requires_grad=True)
    outs = torch.randn(2, 4, requires_grad=True)
    emb = seq_embed(ids, torch.randn(23, 4), rows, torch.tensor([0, 1, 0]), outs, hist_id=20, out_ids=(21, 22))
    u = torch.randn(5, 8, requires_grad=True)
    loss = emb.sum() + sum(distill_loss(u, torch.randn(5, 8)))
    teacher = SASRec(SASRecConfig(num_items=9, hidden=8, max_len=4))
    loss = loss + teacher(torch.tensor([[0, 1, 2, 3]]), torch.tensor([[[1, 2]] * 4])).sum()
    loss.backward()
    assert rows.grad is not None and u.grad is not None and teacher.item_emb.weight.grad is not None
"""


def test_package_imports_and_runs_without_triton() -> None:
    """A meta-path finder makes `import triton` fail; auto falls back to torch even with the
    interpreter requested, and a forced Triton path fails loudly."""
    code = (
        """
    import sys

    class NoTriton:
        def find_spec(self, name, path=None, target=None):
            if name == "triton" or name.startswith("triton."):
                raise ImportError("triton is blocked in this test")
            return None

    sys.meta_path.insert(0, NoTriton())
    """
        + BODY
        + """
    assert not _dispatch.triton_available()
    with force_kernel_path("triton"):
        try:
            distill_loss(u, u)
        except RuntimeError as e:
            assert "does not import" in str(e)
        else:
            raise AssertionError("forced triton without triton ran")
    assert "triton" not in sys.modules
    print("ok")
    """
    )
    out = _run_child(code, TRITON_INTERPRET="1", DIST_SREC_KERNELS="auto")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_triton_is_imported_lazily_and_a_cpu_tensor_needs_the_interpreter() -> None:
    if not _dispatch.triton_available():
        pytest.skip("triton is not installed")
    code = (
        """
    import sys
    """
        + BODY
        + """
    assert "triton" not in sys.modules, "the torch path imported triton"
    with force_kernel_path("triton"):
        try:
            distill_loss(u, u)
        except RuntimeError as e:
            assert "TRITON_INTERPRET=1" in str(e), e
        else:
            raise AssertionError("forced triton on CPU without the interpreter ran")
    print("ok")
    """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "DIST_SREC_KERNELS")}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
