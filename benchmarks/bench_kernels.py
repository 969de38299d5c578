"""Kernel benchmark: torch eager vs torch.compile vs Triton for the three fused ops, fwd / bwd / full.

    .venv/bin/python benchmarks/bench_kernels.py                 # full sweep (CPU: ~10 min)
    .venv/bin/python benchmarks/bench_kernels.py --quick         # the smallest case of each op
    .venv/bin/python benchmarks/bench_kernels.py --ops distill_loss --no-compile

Ops and sweeps (B batch, T tokens, H LLM hidden, L history, D teacher hidden, d head width):
- `seq_embed`, the prompt splice: the paper's step (20 user prompts of ~353 tokens + 80 item prompts
  of ~31 tokens), H = 576 (SmolLM2-135M) and 3072 (the paper's LLaMA-3.2-3B), users up to T = 1024,
  and catalog-encoding batches of 1024 and 4096 item prompts. One [HistoryEmb] slot per 8 tokens,
  items drawn from 3706 (ML-1M), so item rows repeat; vocabulary fixed at 32768 rows (the gather
  cost does not depend on it, the memory of the frozen table does).
- `seq_lookup`, the teacher's embedding: SASRec batches of 128 and 1024 histories of 200 over ML-1M,
  and 8192 over a 100k-item catalog.
- `distill_loss`: B = 20 (the paper), up to 8192 (in-batch / catalog-scale); the reference holds the
  B×B pair matrix, the kernel O(B·d).

Modes: `fwd` (forward with the graph recorded, as in training), `bwd` (backward alone, graph
retained), `full` (both). Median and p20/p80 of `--repeats` timed calls after a warm-up (the first
call of `compile` is its compile time, reported apart). Peak memory is the extra memory one call
takes: on CUDA `max_memory_allocated`; on CPU the peak RSS of this process above its RSS before the
call (the kernel's high-water mark is reset through /proc/self/clear_refs before each measured call).

On a machine without CUDA only `eager` and `compile` are timed: Triton's CPU interpreter is a
correctness tool, orders of magnitude slower, and is not timed as if it were Triton. Writes
benchmarks/results/kernels_<cpu|cuda>.{json,md}.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Before torch loads: one intra-op thread unless told otherwise (as `make bench`; two OpenMP threads on
# a loaded 2-core VM made compiled kernels 100x slower), and a fixed mmap threshold so glibc returns
# large blocks to the OS on free (else peak RSS cannot see a second call's allocations).
if os.environ.get("_BENCH_KERNELS_CHILD") != "1":
    env = {
        "OMP_NUM_THREADS": "1",
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": "1048576",
        "_BENCH_KERNELS_CHILD": "1",
    }
    os.execve(sys.executable, [sys.executable, *sys.argv], env)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks.harness import machine, markdown_table, time_it, write_results

HIST, USER_OUT, ITEM_OUT, VOCAB = 32765, 32766, 32767, 32768


@dataclass(kw_only=True)
class Case:
    op: str
    name: str
    shape: dict[str, int]
    make: Callable[[torch.device], tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any], tuple]]
    """device -> (eager fn, triton fn, loss-from-output fn, args); fns take *args."""


# --------------------------------------------------------------------------------------------- ops
def _splice_case(b: int, t: int, h: int) -> Callable:
    def make(dev: torch.device):
        from dist_srec.kernels.seq_embed import seq_embed_reference

        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, HIST, (b, t), generator=g)
        ids[:, : t - 1 : 8] = HIST  # one history slot per 8 tokens
        ids[:, -1] = torch.where(torch.arange(b) < b // 5, USER_OUT, ITEM_OUT)
        slot_items = torch.randint(1, 3707, (int((ids == HIST).sum()),), generator=g)
        uniq, slot_to_row = torch.unique(slot_items, return_inverse=True)
        table_dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
        table = torch.randn(VOCAB, h, generator=g).to(dev, table_dtype)
        rows = torch.randn(uniq.numel(), h, generator=g).to(dev).requires_grad_(True)
        outs = torch.randn(2, h, generator=g).to(dev).requires_grad_(True)
        args = (ids.to(dev), table, rows, slot_to_row.to(dev), outs)
        kw = {"hist_id": HIST, "out_ids": (USER_OUT, ITEM_OUT)}
        upstream = torch.randn(b, t, h, generator=g).to(dev, table_dtype)

        def eager(*a):
            return seq_embed_reference(*a, **kw)

        def triton_fn(*a):
            from dist_srec.kernels.seq_embed.triton_impl import seq_embed_triton

            return seq_embed_triton(*a, **kw)

        return eager, triton_fn, (lambda out: (out, upstream)), args

    return make


def _lookup_case(b: int, length: int, d: int, n_items: int) -> Callable:
    def make(dev: torch.device):
        from dist_srec.kernels.seq_lookup import seq_lookup_reference

        g = torch.Generator().manual_seed(0)
        ids = torch.randint(1, n_items + 1, (b, length), generator=g)
        pad = torch.randint(0, length, (b,), generator=g)
        ids[torch.arange(length)[None, :] < pad[:, None]] = 0
        item = torch.randn(n_items + 1, d, generator=g).to(dev).requires_grad_(True)
        pos = torch.randn(length, d, generator=g).to(dev).requires_grad_(True)
        upstream = torch.randn(b, length, d, generator=g).to(dev)

        def eager(*a):
            return seq_lookup_reference(*a, math.sqrt(d))

        def triton_fn(*a):
            from dist_srec.kernels.seq_lookup.triton_impl import seq_lookup_triton

            return seq_lookup_triton(*a, math.sqrt(d))

        return eager, triton_fn, (lambda out: (out, upstream)), (ids.to(dev), item, pos)

    return make


def _distill_case(b: int, d: int) -> Callable:
    def make(dev: torch.device):
        from dist_srec.kernels.distill_loss import distill_loss_reference

        g = torch.Generator().manual_seed(0)
        u = torch.randn(b, d, generator=g).to(dev).requires_grad_(True)
        c = torch.randn(b, d, generator=g).to(dev).requires_grad_(True)

        def eager(*a):
            return torch.stack(list(distill_loss_reference(*a)))

        def triton_fn(*a):
            from dist_srec.kernels.distill_loss.triton_impl import distill_loss_triton

            return torch.stack(list(distill_loss_triton(*a)))

        return eager, triton_fn, (lambda out: (out.sum(), None)), (u, c)

    return make


def cases(quick: bool) -> list[Case]:
    sp = [  # (name, B, T, H)
        ("paper users, SmolLM2 H", 20, 384, 576),
        ("paper users", 20, 384, 3072),
        ("paper items", 80, 32, 3072),
        ("long users", 20, 1024, 3072),
        ("catalog items x1024", 1024, 32, 3072),
        ("catalog items x4096", 4096, 32, 3072),
    ]
    lk = [("ML-1M batch", 128, 200, 64, 3706), ("ML-1M x1024", 1024, 200, 64, 3706)]
    lk += [("catalog x8192, 100k items", 8192, 200, 64, 100_000)]
    ds = [("paper", 20, 128), ("in-batch 1024", 1024, 128), ("4096", 4096, 128), ("8192", 8192, 128)]
    out = [
        Case(op="seq_embed", name=n, shape={"B": b, "T": t, "H": h}, make=_splice_case(b, t, h))
        for n, b, t, h in sp
    ]
    out += [
        Case(
            op="seq_lookup",
            name=n,
            shape={"B": b, "L": length, "D": d, "N": ni},
            make=_lookup_case(b, length, d, ni),
        )
        for n, b, length, d, ni in lk
    ]
    out += [
        Case(op="distill_loss", name=n, shape={"B": b, "d": d}, make=_distill_case(b, d)) for n, b, d in ds
    ]
    if quick:
        first: dict[str, Case] = {}
        for c in out:
            first.setdefault(c.op, c)
        out = list(first.values())
    return out


# --------------------------------------------------------------------------------------- measuring
def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def peak_extra_mb(fn: Callable[[], Any], dev: torch.device) -> float:
    """Memory one call of `fn` takes above what was allocated before it, MiB."""
    if dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _rss_kb("VmRSS:")
    fn()
    return (_rss_kb("VmHWM:") - base) / 1024


def measure(case: Case, impl: str, dev: torch.device, repeats: int) -> list[dict[str, Any]]:
    eager, triton_fn, loss_of, args = case.make(dev)
    if impl == "compile":
        torch._dynamo.reset()
        fn = torch.compile(eager, dynamic=False)
    else:
        fn = eager if impl == "eager" else triton_fn
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def params() -> list[torch.Tensor]:
        return [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]

    def fwd():
        out = fn(*args)
        sync()
        return out

    def backward(out) -> None:
        y, g = loss_of(out)
        torch.autograd.grad(y, params(), g, retain_graph=True)
        sync()

    def full() -> None:
        backward(fwd())

    t0 = time.perf_counter()
    full()  # the first call: compiles forward and backward for `compile`
    first_s = time.perf_counter() - t0
    held = fwd()
    rows = []
    for mode, call in (("fwd", fwd), ("bwd", lambda: backward(held)), ("full", full)):
        stats = time_it(call, repeats=repeats, warmup=1)
        peak = peak_extra_mb(call, dev)
        rows.append({"op": case.op, "case": case.name, **case.shape, "impl": impl, "mode": mode,
                     **stats, "peak_extra_mb": peak, "first_call_s": first_s})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="only the smallest case of each op")
    ap.add_argument("--ops", nargs="*", default=None, help="seq_embed seq_lookup distill_loss")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--name", default=None, help="results name (default kernels_<cpu|cuda>)")
    args = ap.parse_args()

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    impls = ["eager"] + ([] if args.no_compile else ["compile"]) + (["triton"] if dev.type == "cuda" else [])
    load_start = os.getloadavg()
    t_start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for case in cases(args.quick):
        if args.ops and case.op not in args.ops:
            continue
        for impl in impls:
            t0 = time.perf_counter()
            try:
                rows += measure(case, impl, dev, args.repeats)
            except Exception as e:  # record, don't hide: an OOM or a compile failure is a result
                rows.append(
                    {"op": case.op, "case": case.name, **case.shape, "impl": impl, "error": repr(e)[:300]}
                )
            print(f"{case.op:13s} {case.name:28s} {impl:8s} {time.perf_counter() - t0:6.1f}s", flush=True)
    info = machine()
    info["loadavg_start"], info["loadavg_end"] = load_start, os.getloadavg()
    name = args.name or f"kernels_{dev.type}"
    payload = {"settings": vars(args), "device": dev.type, "impls": impls, "machine": info,
               "wall_s": time.perf_counter() - t_start, "rows": rows}  # fmt: skip
    write_results(name, payload, render(payload))
    print(f"wrote benchmarks/results/{name}.{{json,md}}")


def render(p: dict[str, Any]) -> str:
    m = p["machine"]
    ms = ("median_s", "p20_s", "p80_s", "first_call_s")
    rows = [{**r, **{k[:-2] + "_ms": r[k] * 1e3 for k in ms if k in r}} for r in p["rows"]]
    md = [
        f"# Kernel benchmark ({p['device']}), {m['date']}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}, GPU {m['gpu']}; "
        f"torch {m['torch']}, triton {m['triton']}, commit {m['git_commit']}. Wall time {p['wall_s']:.0f} s.",
        "",
    ]
    if p["device"] == "cpu":
        md += [
            "**No GPU here: Triton numbers need a GPU.** Only the torch reference (`eager`) and "
            "`torch.compile` of it are timed. The Triton kernels ran in triton's CPU interpreter for the "
            "correctness tests only; the interpreter is not timed as if it were Triton.",
            "",
            f"**Shared machine:** other jobs were running on these {m['cores']} cores (load average "
            f"{m['loadavg_start'][0]:.1f} at the start, {m['loadavg_end'][0]:.1f} at the end). Treat "
            "absolute times as noisy; the p20/p80 spread shows how noisy.",
            "",
            "CPU dtypes: fp32 everywhere (this CPU has no native bf16; the project's `dtype=auto` picks fp32 "
            "here). On CUDA the splice's frozen table is bf16.",
            "",
        ]
    md += [
        "Times in ms (median, p20, p80 of the timed calls); `first_call_ms` is the first fwd+bwd, which for "
        "`compile` includes compiling (inductor's on-disk cache can make it warm across runs). "
        "`peak_extra_mb`: memory one call takes above what was allocated before it (CPU: peak RSS delta; "
        "allocations under 1 MiB come from the heap and do not show, so small cases read 0).",
        "",
    ]
    cols = ["op", "case", "impl", "mode", "median_ms", "p20_ms", "p80_ms", "peak_extra_mb", "first_call_ms"]
    for op, shape_cols in (("seq_embed", ["B", "T", "H"]), ("seq_lookup", ["B", "L", "D", "N"]),
                           ("distill_loss", ["B", "d"])):  # fmt: skip
        sel = [r for r in rows if r["op"] == op]
        if sel:
            err = ["error"] if any("error" in r for r in sel) else []
            md += [f"## {op}", "", markdown_table(sel, [*cols[:2], *shape_cols, *cols[2:], *err]), ""]
    return "\n".join(md)


if __name__ == "__main__":
    main()
