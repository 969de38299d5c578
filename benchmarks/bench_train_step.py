"""LLM-SRec training step under Ray Train: 1 vs 2 workers, DeepSpeed ZeRO stage 0 vs 3, and the two
placement patterns (`DeepSpeedConfig.pattern`): "lm-engine" (the LLM alone in an engine, the heads'
gradients averaged by the task and stepped by the loop's Adam) vs "one-engine" (one engine over LLM +
heads owning Adam; `dist_srec/parallel/one_engine.py`).

    .venv/bin/python benchmarks/bench_train_step.py --data runs/bench/data-ml-100k \\
        --teacher runs/bench/teacher-ml-100k/best --llm smollm2 --steps 8 --patterns lm-engine,one-engine
    .venv/bin/python benchmarks/bench_train_step.py ... --llm tiny --steps 3 --name _scratch/train_step_smoke

Each configuration (pattern x workers x stage) is a fresh `launch` run of `--steps` optimizer steps on a local
Ray cluster (CPU, gloo, `--cpus` CPUs split evenly over the workers, so 1 and 2 workers use the same cores), with the paper's per-rank batch (20 users x
(1 target + 3 negatives) item prompts) unless `--batch-size` says otherwise. From OUT/metrics.jsonl
(a record per step, averaged over ranks):
    start-up   wall time from the driver's start of `fit` to the first step's report (Ray + workers +
               model load + the first step)
    step       median time between consecutive step reports, the first step excluded
    samples/s  workers x batch / step;  peak RSS per rank (MiB, mean over ranks)
    tokens/s   real (non-padding) prompt tokens run through the LM, user and deduplicated item prompts,
               summed over ranks (the loop's cumulative `tokens`), over the same timed steps
The run always ends with one
validation round (whole catalog through the item prompt); it is outside the timed steps. Writes
benchmarks/results/<name>.{json,md}. On a CPU shared with other jobs the numbers mean little: say so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import RESULTS, RssSampler, machine, markdown_table, write_results


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--teacher", required=True)
    p.add_argument("--llm", default="smollm2")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=20, help="users per step and rank")
    p.add_argument("--configs", default="1x0,1x3,2x0,2x3", help="workers x ZeRO stage, comma separated")
    p.add_argument("--patterns", default="lm-engine,one-engine", help="DeepSpeed patterns, comma separated")
    p.add_argument(
        "--cpus", type=int, default=2, help="num_cpus of the local Ray cluster, split over the workers"
    )
    p.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="recompute LM layers in the backward (two SmolLM2 ranks fit in 24 GB only with it)",
    )
    p.add_argument(
        "--ds-override", help="a DeepSpeed JSON merged over the generated config (DeepSpeedConfig.override)"
    )
    p.add_argument("--eval-negatives", type=int, default=99, help="the closing validation round")
    p.add_argument("--mmap-threshold-bytes", type=int, help="SRecRunConfig.mmap_threshold_bytes (less RSS)")
    p.add_argument("--work", default="runs/bench/train-step")
    p.add_argument("--name", default="train_step")
    p.add_argument("--append", action="store_true", help="add rows to benchmarks/results/<name>.json")
    p.add_argument("--run-files-only", action="store_true",
                   help="write results/<name>_configs/ from the committed <name>.json, training nothing")  # fmt: skip
    return p.parse_args()


def run_configs(
    args: argparse.Namespace, pattern: str, workers: int, stage: int, out: str | Path
) -> tuple[Any, Any]:
    """(SRecRunConfig, RayConfig) of one configuration: what `dist-srec launch train` runs."""
    from dist_srec.cluster.ray_train import RayConfig
    from dist_srec.models.lm_config import LLMConfig
    from dist_srec.parallel.deepspeed_config import DeepSpeedConfig
    from dist_srec.train.loop_types import LoopConfig
    from dist_srec.train.srec_train import SRecRunConfig

    loop = LoopConfig(max_steps=args.steps, lr=1e-4, log_every_steps=1, progress=False, eval_every_steps=0)
    cfg = SRecRunConfig(data=args.data, teacher=args.teacher, out=str(out), llm=LLMConfig(path=args.llm, dtype=args.dtype,
                        activation_checkpointing=args.activation_checkpointing),
                        loop=loop, batch_size=args.batch_size, eval_users=50, eval_negatives=args.eval_negatives,
                        mmap_threshold_bytes=args.mmap_threshold_bytes,
                        deepspeed=DeepSpeedConfig(pattern=pattern, stage=stage, override=args.ds_override))  # fmt: skip
    ray_cfg = RayConfig(
        num_workers=workers, name="bench", cpus_per_worker=args.cpus / workers, local_cpus=args.cpus
    )
    return cfg, ray_cfg


def write_run_files(args: argparse.Namespace, rows: list[dict]) -> Path:
    """results/<name>_configs/<i>-<pattern>-w<workers>-s<stage>.yaml: each row's `launch train` run file
    (its DeepSpeed override, when it had one, beside it as .deepspeed.json); paths made portable."""
    from dataclasses import asdict

    from dist_srec.io import write_json_atomic, write_run_file

    folder = RESULTS / f"{args.name}_configs"
    for i, row in enumerate(rows):
        if "pattern" not in row:
            continue
        stem = f"{i:02d}-{row['pattern']}-w{row['workers']}-s{row['zero_stage']}"
        settings = row.get("settings", {})
        override = settings.get("ds_override")
        if override:
            write_json_atomic(folder / f"{stem}.deepspeed.json", override)
        row_args = argparse.Namespace(**{**vars(args), "steps": settings.get("steps", args.steps),
                                         "llm": settings.get("llm", args.llm), "ds_override": None,
                                         "activation_checkpointing": settings.get("activation_checkpointing", False),
                                         "mmap_threshold_bytes": row.get("mmap_threshold_bytes"),
                                         "data": "data/ml-100k", "teacher": "runs/teacher/best"})  # fmt: skip
        cfg, ray_cfg = run_configs(
            row_args, row["pattern"], row["workers"], row["zero_stage"], f"runs/train-step/{stem}"
        )
        doc = {**asdict(cfg), "ray": asdict(ray_cfg)}
        if override:
            doc["deepspeed"]["override"] = str(
                (folder / f"{stem}.deepspeed.json").relative_to(RESULTS.parent.parent)
            )
        write_run_file(folder / f"{stem}.yaml", doc)
    return folder


def run_one(args: argparse.Namespace, pattern: str, workers: int, stage: int) -> dict:
    from dist_srec.cluster.ray_train import fit
    from dist_srec.train.metric_logging import METRICS_FILE

    out = Path(args.work) / f"{pattern}-w{workers}-s{stage}"
    shutil.rmtree(out, ignore_errors=True)  # a fresh run: no resume
    cfg, ray_cfg = run_configs(args, pattern, workers, stage, out)
    t0 = time.time()
    result = fit(cfg, ray_cfg, num_cpus=args.cpus,
                 object_store_memory=int(1e9), include_dashboard=False)  # fmt: skip
    total = time.time() - t0
    row = step_stats(out / METRICS_FILE, workers, args.batch_size, t0)
    row = {"pattern": pattern, "workers": workers, "zero_stage": stage, **row, "run_s": total}
    if result.error is not None:
        if row.get("steps", 0) < 2:
            raise result.error
        # Steps were timed before the failure (e.g. in the closing validation round): keep them, say so.
        row["error"] = (
            f"after the timed steps: {type(result.error).__name__}: "
            + str(result.error).strip().splitlines()[0][:160]
        )
    return row


def step_stats(metrics: Path, workers: int, batch: int, t0: float | None) -> dict:
    """Step timings from a run's metrics.jsonl (a record per step, averaged over ranks); {} if none."""
    if not metrics.is_file():
        return {}
    recs = [json.loads(x) for x in metrics.read_text().splitlines()]
    steps = [r for r in recs if "train_loss" in r]
    if not steps:
        return {}
    gaps = [b["time"] - a["time"] for a, b in zip(steps, steps[1:])]
    step_s = statistics.median(gaps) if gaps else float("nan")
    timed = sum(gaps) if gaps else float("nan")  # tokens of steps 2..n over their wall time
    tokens = steps[-1]["tokens"] - steps[0]["tokens"] if gaps else float("nan")
    return {
        "steps": len(steps), "batch_per_rank": batch,
        "startup_s": steps[0]["time"] - t0 if t0 is not None else None, "step_s": step_s,
        "samples_per_s": workers * batch / step_s, "tokens_per_step": steps[-1]["tokens"] / len(steps),
        "tokens_per_s": tokens / timed, "peak_rss_mb_per_rank": steps[-1]["peak_memory_gb"] * 1024,
    }  # fmt: skip


def write(args: argparse.Namespace, rows: list[dict]) -> None:
    settings = dict(vars(args))
    mach = machine()
    cols = ["pattern", "workers", "zero_stage", "batch_per_rank", "steps", "startup_s", "step_s", "samples_per_s",
            "tokens_per_step", "tokens_per_s", "peak_rss_mb_per_rank", "peak_rss_mb_sampled", "peak_used_mb_node", "lm_dtype", "mmap_threshold_bytes", "error"]  # fmt: skip
    md = "\n".join([
        f"# LLM-SRec train step under Ray Train ({mach['date']})", "",
        f"Settings (of the last invocation; rows may come from several, see the JSON): {json.dumps(settings)}", "",
        f"Machine: {mach['cpu']}, {mach['cores']} cores, GPU {mach['gpu']}; torch {mach['torch']}, "
        f"deepspeed {mach['deepspeed']}, ray {mach['ray']}; commit {mach['git_commit']}", "",
        markdown_table(rows, cols), "",
        "start-up = driver fit() start to the first step's report; step = median gap between step reports "
        "(first excluded); samples/s = workers x batch / step; tokens/s = real prompt tokens of the timed "
        "steps (all ranks, user + deduplicated item prompts) / their wall time; tokens/step over all steps. "
        "A row with an error is a configuration that failed (e.g. killed for memory); it was not retried. "
        "peak_rss_mb_sampled = the largest Ray worker's RSS and peak_used_mb_node = the machine's used memory, "
        "sampled every second from outside (so known for killed runs too; other jobs count in the latter).",
    ])  # fmt: skip
    configs = write_run_files(args, rows)
    md += (
        f"\n\nRun files: `{configs.relative_to(RESULTS.parent.parent)}/` (one per row; "
        "`dist-srec launch train --config FILE --data DIR --teacher CKPT --out DIR`)"
    )
    write_results(args.name, {"settings": settings, "machine": mach, "rows": rows}, md)


def main() -> None:
    from dist_srec.models.lm_config import resolve_dtype

    args = parse()
    prior = RESULTS / f"{args.name}.json"
    if args.run_files_only:
        doc = json.loads(prior.read_text())
        print(
            f"wrote {write_run_files(argparse.Namespace(**{**vars(args), **doc['settings']}), doc['rows'])}"
        )
        return
    rows = json.loads(prior.read_text())["rows"] if args.append and prior.is_file() else []
    for pattern in args.patterns.split(","):
        for spec in args.configs.split(","):
            w, s = (int(x) for x in spec.split("x"))
            with RssSampler("ray::") as mem:  # Ray worker processes, even if they get killed
                try:
                    row = run_one(args, pattern, w, s)
                except Exception as e:  # keep the other configurations' numbers; say what failed
                    row = {"pattern": pattern, "workers": w, "zero_stage": s, "batch_per_rank": args.batch_size,
                           "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"}  # fmt: skip
            row["memory"] = mem.summary()
            row["peak_rss_mb_sampled"] = max(row["memory"]["peaks_mb"].values(), default=None)
            row["peak_used_mb_node"] = row["memory"]["peak_used_mb"]
            row["lm_dtype"] = str(resolve_dtype(args.dtype, "cpu"))  # table columns
            row["mmap_threshold_bytes"] = args.mmap_threshold_bytes
            row["settings"] = {
                "cpu": machine()["cpu"],
                "loadavg_after": os.getloadavg(),
                "steps": args.steps,
                "llm": args.llm,
                "activation_checkpointing": args.activation_checkpointing,
                "ds_override": json.loads(Path(args.ds_override).read_text()) if args.ds_override else None,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            write(args, rows)  # after every configuration: a killed run keeps what it measured
    print(f"wrote {RESULTS / args.name}.json and .md")


if __name__ == "__main__":
    main()
