"""Ray Train orchestration: every worker runs the one training loop (`train_srec` or `pretrain_teacher`).

    driver:  build_trainer(job, RayConfig) -> TorchTrainer(ScalingConfig, RunConfig, TorchConfig)
    worker:  ctx = TrainContext.from_env()              (Ray set up the process group: gloo / nccl)
             restore_from_ray(out)                      (ray.train.get_checkpoint() -> OUT/last, OUT/best)
             train_srec(job, ctx, RayReporter(...))     (the same function `dist-srec train` runs)

The loop calls the reporter on every rank at the same points (every `log_every_steps` steps and after
each `last` save); `RayReporter` turns that into `ray.train.report`, a barrier: metrics (plus each
rank's peak memory) are averaged over ranks by the loop and logged to OUT/metrics.jsonl; after a
save, rank 0 attaches a Ray `Checkpoint` holding `last/` (heads, optimizer, RNG, every rank's data
cursor) and `best/`. The heads are replicated and the LLM is frozen
and identified by its hash, so no rank has a shard of its own to save. A worker failure restarts the
worker group (`FailureConfig.max_failures`) from the latest reported checkpoint.

Validation under several workers: the catalog is encoded in 1/W shares and all-gathered
(`dist_srec.eval.tables.sharded_encode_catalog`); users are split by the per-rank loaders and the metric sums reduced.

Resume across world sizes: from an epoch boundary, yes (the cursor restarts the epoch); mid-epoch,
no: the loop raises `CheckpointError` naming the world size to resume with.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dist_srec.cluster.ray_session import RayWorkers, ray_session
from dist_srec.errors import ConfigError
from dist_srec.inference.evaluate import evaluate_teacher_run
from dist_srec.io import atomic_path, sha256_file
from dist_srec.parallel.context import TrainContext
from dist_srec.storage import RunDir, is_uri, join
from dist_srec.train.srec_train import SRecRunConfig, train_srec
from dist_srec.train.teacher import TeacherRunConfig, run_teacher


@dataclass(kw_only=True)
class RayConfig(RayWorkers):
    """Where and how the workers run (Ray Train `ScalingConfig` / `RunConfig` / `TorchConfig`): the
    `RayWorkers` fields plus these."""

    resources_per_worker: dict[str, float] = field(default_factory=dict)
    """Extra custom resources per worker (e.g. {"memory": 8e9}); CPU/GPU come from the fields above."""
    name: str = "dist-srec"
    """Run name; the same name + storage_path resumes from the latest reported checkpoint."""
    storage_path: str | None = None
    """Where Ray keeps checkpoints and results: a path on shared storage or a URI (s3://, gs://, ...;
    Ray reads it through pyarrow.fs); default OUT/ray (a URI OUT gives OUT/ray under it)."""
    max_failures: int = 0
    """Worker-group restarts allowed after a failure (-1 = unlimited)."""
    num_to_keep: int = 2
    backend: str | None = None
    """torch.distributed backend; None = nccl with GPUs, gloo otherwise."""
    timeout_s: int = 1800

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_failures < -1:
            raise ConfigError(f"config field 'max_failures': must be >= -1, got {self.max_failures}")
        if self.num_to_keep < 1:
            raise ConfigError(f"config field 'num_to_keep': must be >= 1, got {self.num_to_keep}")
        if self.backend not in (None, "gloo", "nccl"):
            raise ConfigError(f"config field 'backend': must be gloo or nccl, got {self.backend!r}")

    @property
    def torch_backend(self) -> str:
        return self.backend or ("nccl" if self.use_gpu else "gloo")


Job = SRecRunConfig | TeacherRunConfig
OnReport = Callable[[dict[str, float], TrainContext], None]


class RayReporter:
    """The loop's `reporter` under Ray Train; call it on every rank (it is a barrier). The loop has
    logs their mean over ranks itself (rank 0, `dist_srec.train.metric_logging`); Ray keeps rank 0's report.

    Args:
        ctx: this worker's place.
        out: the run directory.
        on_report: optional callback after each report, on every rank (monitoring; tests inject faults).
    """

    def __init__(self, ctx: TrainContext, out: str | Path, on_report: OnReport | None = None):
        self.ctx, self.out, self.on_report = ctx, Path(out), on_report

    def __call__(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        import ray.train  # deferred: Ray takes seconds to import; only the Ray paths need it

        if checkpoint_dir is not None and self.ctx.is_main:
            with tempfile.TemporaryDirectory(prefix="dist-srec-ckpt-") as tmp:
                for name, src in (("last", Path(checkpoint_dir)), ("best", self.out / "best")):
                    if src.is_dir():
                        shutil.copytree(src, Path(tmp) / name)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics, checkpoint=None)
        if self.on_report is not None:
            self.on_report(metrics, self.ctx)


def _same_dir(a: Path, b: Path) -> bool:
    names = ("model.safetensors", "train_state.json", "config.json")
    for n in names:
        if (a / n).is_file() != (b / n).is_file():
            return False
        if (a / n).is_file() and sha256_file(a / n) != sha256_file(b / n):
            return False
    return True


def _copy_into(src_root: Path, out: Path) -> None:
    for name in ("last", "best"):
        src = src_root / name
        if src.is_dir() and not ((out / name).is_dir() and _same_dir(src, out / name)):
            with atomic_path(out / name) as tmp:
                shutil.copytree(src, tmp)


def restore_from_ray(out: str | Path, ctx: TrainContext) -> bool:
    """Put the latest Ray checkpoint (`ray.train.get_checkpoint()`) into OUT/last and OUT/best, where
    the loop resumes from. Global rank 0 first, then local rank 0 of each machine (a no-op when OUT is
    shared storage); every rank calls this. True if there was a checkpoint."""
    import ray.train  # deferred: Ray takes seconds to import; only the Ray paths need it

    ck = ray.train.get_checkpoint()
    if ck is None:
        return False
    out = Path(out)
    for turn in (ctx.rank == 0, ctx.rank != 0 and ctx.local_rank == 0):
        if turn:
            with ck.as_directory() as d:
                _copy_into(Path(d), out)
        ctx.barrier()
    return True


def train_worker(config: dict[str, Any]) -> None:
    """The per-worker function of the `TorchTrainer`: config = {"job": SRecRunConfig | TeacherRunConfig,
    "on_report": optional `OnReport`}."""
    import ray.train.torch  # deferred: Ray takes seconds to import; only the Ray paths need it

    job: Job = config["job"]
    device = ray.train.torch.get_device() if config.get("use_gpu") else "cpu"
    ctx = TrainContext.from_env(device)
    out = RunDir(job.out).local  # OUT, or this machine's mirror of a URI OUT
    out.mkdir(parents=True, exist_ok=True)
    restore_from_ray(out, ctx)
    reporter = RayReporter(ctx, out, config.get("on_report"))
    if isinstance(job, SRecRunConfig):
        train_srec(job, ctx, reporter)
        return
    run_teacher(job, ctx, reporter)
    if job.final_eval:
        evaluate_teacher_run(job.data, job.out, job.train, ctx)


def absolute_paths(job: Job) -> Job:
    """`job` with its local paths made absolute on the driver (workers may run in another directory);
    URIs stay as they are."""
    names = ("data", "out", "teacher") if isinstance(job, SRecRunConfig) else ("data", "out")
    paths = {n: getattr(job, n) for n in names}
    return dataclasses.replace(
        job, **{n: v if is_uri(v) else str(Path(v).resolve()) for n, v in paths.items()}
    )


def build_trainer(job: Job, ray_cfg: RayConfig, on_report: OnReport | None = None) -> Any:
    """A `ray.train.torch.TorchTrainer` running `job` on `ray_cfg.num_workers` workers."""

    from ray.train import (  # deferred: Ray takes seconds to import; only the Ray paths need it
        CheckpointConfig,
        FailureConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import (  # deferred: Ray takes seconds to import; only the Ray paths need it
        TorchConfig,
        TorchTrainer,
    )

    resources = {"CPU": ray_cfg.cpus_per_worker, **ray_cfg.resources_per_worker}
    if ray_cfg.use_gpu:
        resources["GPU"] = 1
    env = {}
    if not ray_cfg.use_gpu and os.environ.get("DS_ACCELERATOR") != "cpu":
        env["DS_ACCELERATOR"] = "cpu"  # DeepSpeed on CPU workers: its accelerator probe would look for CUDA
    job = absolute_paths(job)
    storage = ray_cfg.storage_path or join(job.out, "ray")
    return TorchTrainer(
        train_worker,
        train_loop_config={"job": job, "on_report": on_report, "use_gpu": ray_cfg.use_gpu},
        torch_config=TorchConfig(backend=ray_cfg.torch_backend, timeout_s=ray_cfg.timeout_s),
        scaling_config=ScalingConfig(
            num_workers=ray_cfg.num_workers, use_gpu=ray_cfg.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=ray_cfg.name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=ray_cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=ray_cfg.num_to_keep),
            worker_runtime_env={"env_vars": env} if env else None,
        ),
    )


def fit(job: Job, ray_cfg: RayConfig, on_report: OnReport | None = None, **init: Any) -> Any:
    """Connect to (or start) Ray, run the trainer, return its `Result`. `init` goes to `ray.init`
    only when this call starts a new local cluster (e.g. num_cpus, object_store_memory)."""

    with ray_session(ray_cfg.address, ray_cfg.local_cpus, **init):
        return build_trainer(job, ray_cfg, on_report).fit()
