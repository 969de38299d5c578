"""`dist-srec launch train|pretrain-teacher`: the same run files and flags as `train` and
`pretrain-teacher`, plus `--ray.*` (`RayConfig`), run on Ray Train workers (`dist_srec.cluster.ray_train`).
LLM-SRec's DeepSpeed placement is part of its run config (`--deepspeed.stage 3`)."""

from __future__ import annotations

from jsonargparse import ArgumentParser, Namespace

from dist_srec.cli import llmsrec, teacher
from dist_srec.cli.command import Command, parser
from dist_srec.cluster.ray_train import RayConfig, fit


def _with_ray(p: ArgumentParser) -> ArgumentParser:
    p.add_class_arguments(RayConfig, "ray", fail_untyped=False)
    return p


def _train_parser() -> ArgumentParser:
    p = parser("Train LLM-SRec on Ray Train workers (CPU with gloo, or one GPU each with nccl).", [
        "dist-srec launch train --config run.yaml --ray.num_workers 2 --ray.local_cpus 2 --deepspeed.stage 3",
        "dist-srec launch train --config run.yaml --ray.num_workers 8 --ray.use_gpu true --ray.address auto",
    ], run_file=True)  # fmt: skip
    llmsrec.add_run_config(p)
    return _with_ray(p)


def _pretrain_parser() -> ArgumentParser:
    p = parser("Pre-train the SASRec teacher on Ray Train workers (DDP).", [
        "dist-srec launch pretrain-teacher --data runs/demo/data --out runs/teacher-ray --ray.num_workers 2",
    ], run_file=True)  # fmt: skip
    teacher.add_run_config(p)
    return _with_ray(p)


def ray_config(p: ArgumentParser, ns: Namespace) -> RayConfig:
    return p.instantiate(ns).ray


def _finish(result) -> None:
    if result.error is not None:
        raise result.error
    print(f"ray train: finished; metrics {result.metrics}; checkpoint {result.checkpoint}")


def _train(p: ArgumentParser, ns: Namespace) -> int:
    cfg = llmsrec.run_config(p, ns)
    _finish(fit(cfg, ray_config(p, ns)))
    print(f"llm-srec: checkpoint {cfg.out}/best, metrics {cfg.out}/metrics.jsonl")
    return 0


def _pretrain(p: ArgumentParser, ns: Namespace) -> int:
    run = teacher.run_config(p, ns)
    _finish(fit(run, ray_config(p, ns)))
    print(f"teacher: checkpoint {run.out}/best")
    return 0


SUBCOMMANDS = [
    Command("train", "train LLM-SRec on Ray Train workers", _train_parser, _train),
    Command(
        "pretrain-teacher", "train the SASRec teacher on Ray Train workers (DDP)", _pretrain_parser, _pretrain
    ),
]
