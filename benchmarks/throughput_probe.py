"""Instrumentation for bench_throughput: matmul peaks, and a phase timer wrapped around LLM-SRec's own
code path (nothing is reimplemented; the real functions are wrapped for the duration of a block).

Phases of a training step:
    data       loader batch + negative sampling          tokenise   cached prompt rows -> padded ids
    splice     seq_embed (token table + injected rows)   teacher    frozen SASRec user vector
    user fwd / item fwd   the LM body's forward          losses     llmsrec_loss
    backward   loss.backward()                           optimizer  grad sync + Adam step + zero_grad
    other      the remainder (heads, gathers, Python)
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from dist_srec.models.flops import BodyShape


def _best_gflops(m: int, k: int, n: int, dtype: torch.dtype, reps: int) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * m * k * n / best / 1e9


def matmul_peaks(shape: BodyShape, tokens: int, reps: int) -> dict[str, Any]:
    """Best-of-`reps` GFLOP/s per dtype: a 2048^3 GEMM and the body's own GEMM shapes at `tokens` rows.

    Returns {dtype: {"square_2048": g, "MxKxN": g, ..., "peak": max}}, and "best" = the max over dtypes
    (the machine's matmul limit, whichever dtype reaches it)."""
    out: dict[str, Any] = {}
    for name, dt in (("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        row = {"square_2048": _best_gflops(2048, 2048, 2048, dt, reps)}
        for m, k, n in shape.gemm_shapes(tokens):
            row[f"{m}x{k}x{n}"] = _best_gflops(m, k, n, dt, reps)
        row["peak"] = max(row.values())
        out[name] = row
    out["best"] = max(out["bfloat16"]["peak"], out["float32"]["peak"])
    return out


def merge_peaks(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Element-wise max of two `matmul_peaks` readings, both kept under "readings"."""
    out: dict[str, Any] = {"readings": [first, second]}
    for d in ("bfloat16", "float32"):
        out[d] = {k: max(first[d][k], second[d][k]) for k in first[d]}
    out["best"] = max(out["bfloat16"]["peak"], out["float32"]["peak"])
    return out


class PhaseTimer:
    """Accumulated seconds per phase, plus per LM forward: (kind, real lengths, padded shape, each
    row's first spliced position: [HistoryEmb] or the out token, before which nothing trainable
    reaches a position)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.forwards: list[tuple[str, np.ndarray, tuple[int, int], np.ndarray]] = []
        self.kind = "item"

    def reset(self) -> None:
        self.seconds.clear()
        self.forwards.clear()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0

    def timed(self, name: str | Callable[[], str], fn: Callable) -> Callable:
        def wrapper(*a: Any, **k: Any) -> Any:
            with self.phase(name() if callable(name) else name):
                return fn(*a, **k)

        return wrapper

    def tagged(self, kind: str, fn: Callable) -> Callable:
        def wrapper(*a: Any, **k: Any) -> Any:
            prev, self.kind = self.kind, kind
            try:
                return fn(*a, **k)
            finally:
                self.kind = prev

        return wrapper

    def tokens(self, kind: str | None = None) -> tuple[int, int]:
        """(real, padded) tokens over the recorded forwards (of one kind, or all)."""
        real = padded = 0
        for k, lens, (b, t), _ in self.forwards:
            if kind is None or k == kind:
                real += int(lens.sum())
                padded += b * t
        return real, padded


@contextmanager
def instrumented(model: Any, timer: PhaseTimer) -> Iterator[PhaseTimer]:
    """Wrap LLM-SRec's functions with `timer` for the duration of the block, then restore them."""
    import dist_srec.models.llmsrec as srec_mod
    import dist_srec.train.srec_task as task_mod
    from dist_srec.models.prompts import PromptRows

    orig_pack = PromptRows.pack

    def pack(rows: PromptRows, index: Any = None) -> Any:
        with timer.phase("tokenise"):
            pb = orig_pack(rows, index)
        lens = rows.lengths if index is None else rows.lengths[np.asarray(index)]
        ids = pb.input_ids
        first = ((ids == rows.hist_id) | (ids == rows.out_id)).int().argmax(1).numpy()
        timer.forwards.append((timer.kind, np.asarray(lens), tuple(ids.shape), first))
        return pb

    module_patches = [
        (srec_mod, "seq_embed", timer.timed("splice", srec_mod.seq_embed)),
        (srec_mod, "llmsrec_loss", timer.timed("losses", srec_mod.llmsrec_loss)),
        (task_mod, "sample_train_negatives", timer.timed("data", task_mod.sample_train_negatives)),
        (PromptRows, "pack", pack),
    ]
    instance_patches = [
        (model.prompts, "user_rows", timer.timed("tokenise", model.prompts.user_rows)),
        (model.prompts, "item_rows", timer.timed("tokenise", model.prompts.item_rows)),
        (model, "encode_users", timer.tagged("user", model.encode_users)),
        (model, "encode_items", timer.tagged("item", model.encode_items)),
        (model, "teacher_user", timer.timed("teacher", model.teacher_user)),
        (model.lm, "hidden", timer.timed(lambda: f"{timer.kind} fwd", model.lm.hidden)),
        (model.lm, "hidden_after", timer.timed(lambda: f"{timer.kind} fwd", model.lm.hidden_after)),
        (model.lm, "extend_kv", timer.timed(lambda: f"{timer.kind} fwd", model.lm.extend_kv)),
    ]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in module_patches]
    try:
        for obj, name, fn in module_patches + instance_patches:
            setattr(obj, name, fn)
        yield timer
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)
        for obj, name, _ in instance_patches:
            delattr(obj, name)  # back to the class's bound method


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::linear", "aten::matmul")


def op_profile(fn: Callable[[], Any], top: int = 15) -> dict[str, Any]:
    """Run `fn` once under the torch profiler: self time per op (top `top`) and grouped into matmul,
    attention forward, attention backward and everything else (elementwise, norms, copies, compiled
    graphs' own kernels, Python-side dispatch)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    groups: dict[str, float] = defaultdict(float)
    for e in events:
        name = e.key
        if name in MATMUL_OPS:
            group = "matmul"
        elif "attention" in name:
            group = "attention backward" if "backward" in name else "attention forward"
        else:
            group = "other"
        groups[group] += e.self_cpu_time_total
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {
        "total_self_s": total / 1e6,
        "groups_share": {k: v / total for k, v in groups.items()},
        "top_ops": [
            {
                "op": e.key,
                "self_s": e.self_cpu_time_total / 1e6,
                "share": e.self_cpu_time_total / total,
                "calls": e.count,
            }
            for e in rows
        ],
    }
