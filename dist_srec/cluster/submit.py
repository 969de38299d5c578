"""Submitting a command to a Ray cluster through the Ray Jobs SDK (`JobSubmissionClient`).

The job runs `entrypoint` (e.g. `python launch/train.py train ...`) on the cluster's head node, in a
copy of `working_dir` (uploaded; `.venv`, `runs`, caches and data are left out) with `pip` packages
installed by Ray in a per-job environment. `launch/submit.py` is the command line.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dist_srec.errors import ConfigError

# Never uploaded with the working dir: environments, outputs, caches, raw data (Ray caps the upload).
DEFAULT_EXCLUDES = [".venv/", ".git/", "runs/", ".cache/", "data/", "benchmarks/results/", "**/__pycache__/",
                    ".pytest_cache/", ".ruff_cache/", "*.egg-info/"]  # fmt: skip


@dataclass(kw_only=True)
class SubmitConfig:
    """One Ray job: where to send it, what it runs, and its runtime environment."""

    address: str = "http://127.0.0.1:8265"
    """The cluster's dashboard / job server address."""
    entrypoint: str
    """Shell command run on the cluster, e.g. `python launch/train.py train --data ...`."""
    working_dir: str = "."
    pip: list[str] | str | None = None
    """Packages for the job's environment: a list, or a requirements file path (None: the cluster's)."""
    env_vars: dict[str, str] = field(default_factory=dict)
    excludes: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDES))
    job_id: str | None = None
    """submission_id to use (None: Ray makes one)."""
    entrypoint_num_cpus: float | None = None
    entrypoint_num_gpus: float | None = None

    def __post_init__(self) -> None:
        if not self.entrypoint.strip():
            raise ConfigError("config field 'entrypoint': a command to run is required")
        if not Path(self.working_dir).is_dir():
            raise ConfigError(f"config field 'working_dir': {self.working_dir} is not a directory")
        if isinstance(self.pip, str) and not Path(self.pip).is_file():
            raise ConfigError(f"config field 'pip': requirements file {self.pip} does not exist")

    def runtime_env(self) -> dict[str, Any]:
        """The job's `runtime_env`: working_dir (+ excludes), pip, env_vars."""
        env: dict[str, Any] = {
            "working_dir": str(Path(self.working_dir).resolve()),
            "excludes": self.excludes,
        }
        if self.pip is not None:
            env["pip"] = str(Path(self.pip).resolve()) if isinstance(self.pip, str) else list(self.pip)
        if self.env_vars:
            env["env_vars"] = dict(self.env_vars)
        return env


def submit(cfg: SubmitConfig) -> tuple[Any, str]:
    """Submit the job; returns (client, job id)."""
    from ray.job_submission import (
        JobSubmissionClient,  # deferred: Ray takes seconds to import; only the Ray paths need it
    )

    client = JobSubmissionClient(cfg.address)
    job_id = client.submit_job(
        entrypoint=cfg.entrypoint, runtime_env=cfg.runtime_env(), submission_id=cfg.job_id,
        entrypoint_num_cpus=cfg.entrypoint_num_cpus, entrypoint_num_gpus=cfg.entrypoint_num_gpus,
    )  # fmt: skip
    return client, job_id


def follow_logs(client: Any, job_id: str, out: Any = None) -> None:
    """Stream the job's logs to `out` (stdout) until it ends."""

    out = out or sys.stdout

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(tail())


def wait(client: Any, job_id: str, timeout_s: float = 3600.0, poll_s: float = 1.0) -> str:
    """Poll until the job is SUCCEEDED, FAILED or STOPPED (or `timeout_s` passes); returns the status."""
    from ray.job_submission import (
        JobStatus,  # deferred: Ray takes seconds to import; only the Ray paths need it
    )

    end = time.monotonic() + timeout_s
    while True:
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return str(status.value)
        if time.monotonic() > end:
            return str(status.value)
        time.sleep(poll_s)
