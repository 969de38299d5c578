"""Per-rank host memory of the frozen LM's training passes: DeepSpeed ZeRO stage 0 vs 3, with glibc's
dynamic mmap threshold vs a fixed one (`SRecRunConfig.mmap_threshold_bytes`, `dist_srec.train.sysmem`).

    .venv/bin/python benchmarks/bench_lm_memory.py                      # SmolLM2, every config
    .venv/bin/python benchmarks/bench_lm_memory.py --llm tiny --passes 1 --name _scratch/lm_memory

Each configuration is a fresh process at world size 1 (a gloo process group of one, no Ray): it loads
the LM through `dist_srec.parallel.lm_engine.load_lm_deepspeed` (stage 3: partitioned under zero.Init, the
engine's gather hooks on every layer), then runs `--passes` forward + input-gradient backward passes of
random inputs [batch, tokens, H] in the LM's dtype, as a training step's user pass does. A thread
samples the process's RSS every 50 ms; each phase reports the RSS at its end and the peak within it.
What the fixed threshold is for: freed multi-MiB buffers (activations, gathered weights) otherwise stay
in glibc's heap as resident memory. Writes benchmarks/results/<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import machine, markdown_table, run_child, write_results

THRESHOLDS = {"dynamic": None, "128KiB": 128 << 10, "1MiB": 1 << 20}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--llm", default="smollm2")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--stages", default="0,3")
    p.add_argument("--thresholds", default="dynamic,128KiB", help=f"comma separated, of {list(THRESHOLDS)}")
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--tokens", type=int, default=160)
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--no-activation-checkpointing", action="store_true")
    p.add_argument("--ds-override", help="a DeepSpeed JSON merged over the generated config")
    p.add_argument("--name", default="lm_memory")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args()


def child(args: argparse.Namespace) -> None:
    """One configuration, in this process: prints one JSON line."""
    import threading
    import time

    import psutil
    import torch
    import torch.distributed as dist

    from dist_srec.models.lm_config import LLMConfig
    from dist_srec.parallel.deepspeed_config import DeepSpeedConfig
    from dist_srec.parallel.lm_engine import init_deepspeed_distributed, load_lm_deepspeed
    from dist_srec.train.sysmem import fix_mmap_threshold

    stage, threshold = json.loads(args.child)
    applied = fix_mmap_threshold(THRESHOLDS[threshold])
    proc, peak, phases = psutil.Process(), [0], []

    def sample() -> None:
        while True:
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.05)

    def mark(name: str, **extra: float) -> None:
        time.sleep(0.1)  # one more sample
        rss = proc.memory_info().rss
        phases.append({"phase": name, "rss_mb": rss / 2**20, "peak_mb": max(peak[0], rss) / 2**20, **extra})
        peak[0] = 0

    threading.Thread(target=sample, daemon=True).start()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29400 + os.getpid() % 500), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")  # fmt: skip
    dist.init_process_group("gloo", rank=0, world_size=1)
    init_deepspeed_distributed()
    mark("start")
    t0 = time.perf_counter()
    llm = LLMConfig(
        path=args.llm,
        dtype=args.dtype,
        activation_checkpointing=not args.no_activation_checkpointing,
        compile_layers=False,  # ZeRO-3 partitions the weights: the fused layers do not apply
    )
    lm = load_lm_deepspeed(llm, DeepSpeedConfig(stage=stage, override=args.ds_override), torch.device("cpu"),
                           micro_batch=args.batch)  # fmt: skip
    table = lm.input_embeddings()
    mark("load", seconds=time.perf_counter() - t0)
    gen = torch.Generator().manual_seed(0)
    for i in range(args.passes):
        x = (
            torch.randn(args.batch, args.tokens, table.shape[1], generator=gen)
            .to(table.dtype)
            .requires_grad_()
        )
        t0 = time.perf_counter()
        h = lm.hidden(x)
        mark(f"forward {i}", seconds=time.perf_counter() - t0)
        t0 = time.perf_counter()
        h.float().square().mean().backward()
        lm.release_gathered()
        mark(f"backward {i}", seconds=time.perf_counter() - t0)
        del h, x
    print(json.dumps({"stage": stage, "threshold": threshold, "applied": applied, "dtype": str(table.dtype),
                      "phases": phases}))  # fmt: skip
    dist.destroy_process_group()


def main() -> None:
    args = parse()
    if args.child:
        return child(args)
    env = {"DS_ACCELERATOR": "cpu"}
    rows, runs = [], []
    for stage in (int(s) for s in args.stages.split(",")):
        for threshold in args.thresholds.split(","):
            if threshold not in THRESHOLDS:
                raise SystemExit(f"--thresholds: unknown {threshold!r}; choose from {list(THRESHOLDS)}")
            argv = [*sys.argv[1:], "--child", json.dumps([stage, threshold])]
            res = run_child([str(Path(__file__).resolve()), *argv], env=env)
            runs.append(res)
            ph = res["phases"]
            steps = [p for p in ph if p["phase"].startswith(("forward", "backward"))]
            rows.append({
                "zero_stage": stage, "mmap_threshold": threshold, "applied": res["applied"],
                "rss_after_load_mb": ph[1]["rss_mb"], "peak_load_mb": ph[1]["peak_mb"],
                "peak_passes_mb": max(p["peak_mb"] for p in steps),
                "rss_after_passes_mb": ph[-1]["rss_mb"],
                "fwd_bwd_s": sum(p["seconds"] for p in steps) / args.passes,
            })  # fmt: skip
            print(rows[-1], flush=True)
    cols = ["zero_stage", "mmap_threshold", "applied", "rss_after_load_mb", "peak_load_mb", "peak_passes_mb",
            "rss_after_passes_mb", "fwd_bwd_s"]  # fmt: skip
    m = machine()
    md = "\n".join([
        f"# Frozen-LM host memory per rank: ZeRO stage x glibc mmap threshold ({m['date']})", "",
        f"Settings: {json.dumps({k: v for k, v in vars(args).items() if k != 'child'})}; LM dtype "
        f"{runs[0]['dtype']}, world size 1 (gloo), no Ray.", "",
        f"Machine: {m['cpu']}, {m['cores']} cores; load average {m.get('loadavg_1_5_15')}; torch {m['torch']}.", "",
        markdown_table(rows, cols), "",
        "peak = the largest RSS sampled (every 50 ms) within the phase; passes = forward + input-gradient "
        "backward of random [batch, tokens, H] inputs, mean seconds per pass (one process at a time, so "
        "the times are comparable only on a quiet machine). dynamic = glibc's default; 128KiB/1MiB = "
        "`mallopt(M_MMAP_THRESHOLD)` fixed at that size (`SRecRunConfig.mmap_threshold_bytes`, off by default).",
    ])  # fmt: skip
    write_results(args.name, {"benchmark": "lm_memory", "machine": m, "settings": vars(args), "rows": rows,
                              "runs": runs}, md)  # fmt: skip


if __name__ == "__main__":
    main()
