"""Which attention kernel runs, and how fast forward and backward, at SmolLM2-135M's shapes on this CPU.

    .venv/bin/python benchmarks/bench_attention.py            # user prompts: 20 x 352 tokens, bf16
    .venv/bin/python benchmarks/bench_attention.py --batch 80 --tokens 32 --head-tokens 10 \
        --name attention_cpu_short                            # a training step's item prompts

Shapes: B prompts of T tokens, 9 query and 3 key/value heads of 64 (SmolLM2-135M), and the prompt-head
case (queries after a cached P-token head, keys over all T). Variants: SDPA with GQA (`enable_gqa`) or
with `repeat_kv`, causal (`is_causal`) or with a boolean mask, as transformers calls it with and without
a mask; the explicit math path (two batched GEMMs and a softmax in fp32 or bf16), whose GEMMs go
through oneDNN; `dist_srec.models.fused_layer.math_attention` (fp32 softmax, bf16 probabilities: what
`LLMConfig.math_attention_max_keys` selects for short prompts); and
`flex_attention` compiled with a causal block mask. Where a variant has no backward on this device
(flex_attention on CPU, torch <= 2.13), its forward is timed without grad and the row says why the
backward is missing. Best of `--repeats` after 2 warm-ups; the kernel names come from the
torch profiler.
Useful GFLOP/s count the causal half only: forward 2 GEMMs of 2·B·H·T²·D / 2, backward 2.5 times that.
Writes benchmarks/results/<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention
from torch.profiler import ProfilerActivity, profile

from benchmarks.harness import machine, markdown_table, write_results
from dist_srec.models.fused_layer import math_attention


def grad_or_detached(*xs: torch.Tensor) -> list[torch.Tensor]:
    """The inputs as they are with grad enabled, detached under no_grad (a forward-only kernel refuses
    inputs that require grad even then)."""
    return [x if torch.is_grad_enabled() else x.detach() for x in xs]


def variants(b: int, h: int, kv: int, t: int, d: int, p: int, dt: torch.dtype) -> dict[str, Any]:
    def mk(*s: int) -> torch.Tensor:
        return torch.randn(*s, dtype=dt, requires_grad=True)

    def rep(x: torch.Tensor) -> torch.Tensor:
        return (
            x[:, :, None].expand(x.shape[0], kv, h // kv, *x.shape[2:]).reshape(x.shape[0], h, *x.shape[2:])
        )

    q, k, v, qa = mk(b, h, t, d), mk(b, kv, t, d), mk(b, kv, t, d), mk(b, h, t - p, d)
    causal, after = torch.ones(t, t, dtype=torch.bool).tril(), torch.ones(t - p, t, dtype=torch.bool).tril(p)
    neg = torch.full((t, t), float("-inf")).triu(1)

    def math(soft_dtype: torch.dtype) -> torch.Tensor:
        s = (q @ rep(k).transpose(-1, -2)).to(soft_dtype) * d**-0.5 + neg.to(soft_dtype)
        return s.softmax(-1).to(dt) @ rep(v)

    sdpa = F.scaled_dot_product_attention

    flex = torch.compile(flex_attention)
    block_mask = create_block_mask(lambda b_, h_, qi, ki: qi >= ki, None, None, t, t, device=q.device.type)
    try:  # eager probe with grad: a failed call inside the compiled function would leave it running eager
        flex_attention(q[:1, :, :16], k[:1, :, :16], v[:1, :, :16], enable_gqa=True)
        no_backward = ""
    except NotImplementedError as e:
        no_backward = str(e)

    def flex_causal() -> torch.Tensor:
        if no_backward and torch.is_grad_enabled():
            raise NotImplementedError(no_backward)
        return flex(*grad_or_detached(q, k, v), block_mask=block_mask, enable_gqa=True)

    return {
        "sdpa gqa, is_causal": (lambda: sdpa(q, k, v, is_causal=True, enable_gqa=True), t),
        "sdpa repeat_kv, is_causal": (lambda: sdpa(q, rep(k), rep(v), is_causal=True), t),
        "sdpa repeat_kv, bool mask": (lambda: sdpa(q, rep(k), rep(v), attn_mask=causal), t),
        "after head: sdpa repeat_kv, mask": (lambda: sdpa(qa, rep(k), rep(v), attn_mask=after), t - p),
        "after head: sdpa gqa, mask": (lambda: sdpa(qa, k, v, attn_mask=after, enable_gqa=True), t - p),
        "after head: math_attention, mask": (
            lambda: math_attention(torch.nn.Module(), qa, k, v, after, d**-0.5)[0],
            t - p,
        ),
        "math, fp32 softmax": (lambda: math(torch.float32), t),
        "math, bf16 softmax": (lambda: math(dt), t),
        "flex_attention, compiled, causal": (flex_causal, t),
    }


def measure(fn: Any, repeats: int) -> dict[str, Any]:
    try:
        fn()
    except NotImplementedError as e:  # no backward on this device: time the forward alone
        with torch.no_grad():
            return {**measure_forward(fn, repeats), "bwd_ms": None, "note": str(e).split(".")[0]}
    for _ in range(2):
        fn().float().sum().backward()
    fwd = bwd = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        t1 = time.perf_counter()
        out.float().sum().backward()
        fwd, bwd = min(fwd, t1 - t0), min(bwd, time.perf_counter() - t1)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn().float().sum().backward()
    kernels = sorted({e.key for e in prof.key_averages() if "attention" in e.key and "backward" not in e.key})
    return {
        "fwd_ms": fwd * 1e3,
        "bwd_ms": bwd * 1e3,
        "kernels": ", ".join(kernels) or "bmm + softmax",
        "note": "",
    }


def measure_forward(fn: Any, repeats: int) -> dict[str, Any]:
    """Best forward time of `repeats` after 2 warm-ups (the caller sets no_grad), and the attention
    kernels or compiled regions the profiler saw run."""
    for _ in range(2):
        fn()
    fwd = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        fwd = min(fwd, time.perf_counter() - t0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    seen = {"compiled graph" if "Compiled" in e.key else e.key for e in prof.key_averages()}
    kernels = sorted(k for k in seen if "attention" in k or k == "compiled graph")
    return {"fwd_ms": fwd * 1e3, "kernels": ", ".join(kernels) or "bmm + softmax"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=352)
    ap.add_argument("--head-tokens", type=int, default=24, help="the cached prompt head (P)")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--name", default="attention_cpu")
    a = ap.parse_args()
    torch.manual_seed(0)
    b, h, kv, t, d, p = a.batch, 9, 3, a.tokens, 64, a.head_tokens
    rows = []
    for name, (fn, tq) in variants(b, h, kv, t, d, p, getattr(torch, a.dtype)).items():
        r = measure(fn, a.repeats)
        flop = 2 * 2 * b * h * tq * t * d / 2  # two GEMMs, the causal half
        rows.append({"variant": name, **r, "fwd_gflops": flop / r["fwd_ms"] / 1e6,
                     "bwd_gflops": 2.5 * flop / r["bwd_ms"] / 1e6 if r["bwd_ms"] else None})  # fmt: skip
        print(f"{name:34s} fwd {r['fwd_ms']:7.1f} ms  bwd {r['bwd_ms'] or float('nan'):7.1f} ms  {r['kernels']} "
              f"{r['note']}", flush=True)  # fmt: skip
    mach = machine()
    payload = {"benchmark": "attention", "settings": vars(a), "machine": mach, "rows": rows}
    md = "\n".join([
        f"# Attention at SmolLM2-135M shapes ({mach['date']})", "",
        f"Machine: {mach['cpu']}, {mach['cores']} cores, torch threads {mach['torch_threads']}; torch {mach['torch']}. "
        f"B={b} prompts x T={t} tokens, 9 q / 3 kv heads of 64, {a.dtype}; prompt head P={p}. Best of {a.repeats}.", "",
        markdown_table(rows, ["variant", "fwd_ms", "bwd_ms", "fwd_gflops", "bwd_gflops", "kernels", "note"]),
    ])  # fmt: skip
    write_results(a.name, payload, md)
    print(md)


if __name__ == "__main__":
    main()
