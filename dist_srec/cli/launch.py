"""`dist-srec launch train|pretrain-teacher`: the single-machine commands' flags plus Ray and DeepSpeed
flags, run on Ray Train workers (`dist_srec.cluster.ray_train`). `launch/train.py` is the same entry point.

    dist-srec launch train --data D --teacher T --llm tiny --out runs/srec --workers 2 --zero-stage 3
    dist-srec launch pretrain-teacher --data D --out runs/teacher --workers 2
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from dist_srec.cli.llmsrec import add_srec_commands, run_config
from dist_srec.cli.teacher import add_teacher_commands, teacher_configs
from dist_srec.cluster.ray_train import RayConfig, TeacherJob, fit
from dist_srec.parallel.deepspeed_config import DeepSpeedConfig


def _add_ray_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Ray Train")
    g.add_argument("--workers", dest="ray_workers", type=int, default=2, help="Ray Train workers")
    g.add_argument("--gpu", action="store_true", help="one GPU per worker, nccl (default: CPU, gloo)")
    g.add_argument("--cpus-per-worker", type=float, default=1.0)
    g.add_argument("--resources", default="{}", help='extra resources per worker, JSON: {"memory": 8e9}')
    g.add_argument("--name", default="dist-srec", help="run name; the same name + storage resumes")
    g.add_argument("--storage-path", help="checkpoints and results (shared storage on clusters)")
    g.add_argument("--max-failures", type=int, default=0, help="worker-group restarts after a failure")
    g.add_argument("--address", help="Ray cluster address (default: running cluster, else local)")
    g.add_argument("--local-cpus", type=int, help="num_cpus of a local cluster this command starts")


def _add_deepspeed_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("DeepSpeed (frozen LLM placement)")
    g.add_argument("--zero-stage", type=int, choices=[0, 3], help="place the LLM with DeepSpeed ZeRO 0 or 3")
    g.add_argument("--ds-bf16", choices=["auto", "on", "off"], default="auto", help="auto: the LLM dtype")
    g.add_argument("--ds-config", help="user DeepSpeed JSON merged over the generated one")
    g.add_argument("--ds-pattern", choices=["lm-engine", "one-engine"], default="lm-engine",
                   help="lm-engine: the LLM alone in an engine, heads stepped by the loop; one-engine: one "
                   "engine over LLM + heads owning the optimizer")  # fmt: skip


def add_launch_commands(sub: argparse._SubParsersAction) -> None:
    """Register `launch` with its `train` and `pretrain-teacher` subcommands."""

    p = sub.add_parser("launch", help="run training on Ray Train workers (local CPU or a GPU cluster)")
    inner = p.add_subparsers(dest="launch_command", required=True)
    single = argparse.ArgumentParser().add_subparsers()  # harvest the single-machine commands' flags
    add_srec_commands(single)
    add_teacher_commands(single)
    for name, func, what in (
        ("train", _cmd_train, "train LLM-SRec on Ray Train workers"),
        ("pretrain-teacher", _cmd_teacher, "train the SASRec teacher on Ray Train workers (DDP)"),
    ):
        q = inner.add_parser(name, parents=[single.choices[name]], conflict_handler="resolve", help=what)
        _add_ray_flags(q)
        if name == "train":
            _add_deepspeed_flags(q)
        q.set_defaults(func=func)


def ray_config(args: argparse.Namespace) -> Any:
    return RayConfig(
        num_workers=args.ray_workers, use_gpu=args.gpu, cpus_per_worker=args.cpus_per_worker,
        resources_per_worker=json.loads(args.resources), name=args.name, storage_path=args.storage_path,
        max_failures=args.max_failures, address=args.address,
    )  # fmt: skip


def _fit(job: Any, args: argparse.Namespace) -> Any:

    init: dict[str, Any] = {"include_dashboard": False}
    if args.local_cpus:
        init |= {"num_cpus": args.local_cpus, "object_store_memory": int(1e9)}
    result = fit(job, ray_config(args), **(init if not args.address else {}))
    if result.error is not None:
        raise result.error
    print(f"ray train: finished; metrics {result.metrics}; checkpoint {result.checkpoint}")
    return result


def _cmd_train(args: argparse.Namespace) -> int:

    cfg = run_config(args)
    if args.zero_stage is not None:
        bf16 = {"auto": None, "on": True, "off": False}[args.ds_bf16]
        cfg.deepspeed = DeepSpeedConfig(
            pattern=args.ds_pattern, stage=args.zero_stage, bf16=bf16, override=args.ds_config
        )
    _fit(cfg, args)
    print(f"llm-srec: checkpoint {cfg.out}/best, metrics {cfg.out}/metrics.jsonl")
    return 0


def _cmd_teacher(args: argparse.Namespace) -> int:

    model, train = teacher_configs(args)
    job = TeacherJob(
        data=args.data, out=args.out, model=model, train=train, final_eval=not args.no_final_eval
    )
    _fit(job, args)
    print(f"teacher: checkpoint {args.out}/best")
    return 0
