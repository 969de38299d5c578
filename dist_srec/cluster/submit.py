"""`dist-srec submit`: a Ray job that ships the project (Ray Jobs SDK, `JobSubmissionClient`).

    submitter: wheel = --wheel, or `pip wheel` of the source checkout this package runs from
               unpack it; runtime_env.py_modules = [dist_srec/, dist_srec-<v>.dist-info/]
               entrypoint `dist-srec ARGS` -> `python -m dist_srec ARGS` (no console script on the cluster)
    cluster:   Ray uploads the modules once, puts them first on every job process's PYTHONPATH (the
               driver and every Ray Train worker or actor), so the job imports exactly the submitted
               code, whatever the cluster's Python has installed.

The cluster must provide the third-party stack (torch, Ray, DeepSpeed, ...): an image, the setup
commands of `launch/cluster/ray-cluster.yaml`, or `--pip requirements/stack.txt` (Ray installs it in a
per-job virtualenv). No package index is needed on the cluster for dist-srec itself.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import dist_srec
from dist_srec.errors import ConfigError

DEFAULT_EXCLUDES = [".venv/", ".git/", "runs/", ".cache/", "data/", "benchmarks/results/", "**/__pycache__/",
                    ".pytest_cache/", ".ruff_cache/", "*.egg-info/"]  # fmt: skip
"""Never uploaded with `--working_dir`: environments, outputs, caches, raw data (Ray caps the upload)."""
PROJECT_SOURCES = ("pyproject.toml", "README.md", "dist_srec", "kernels")
"""What a wheel is built from (copied first, so the checkout gets no build/ or egg-info)."""


@dataclass(kw_only=True)
class SubmitConfig:
    """One Ray job: where it goes, the code it ships, its runtime environment and resources."""

    address: str | None = None
    """The cluster's job server (dashboard), e.g. http://HEAD:8265 (None: $RAY_ADDRESS, else
    http://127.0.0.1:8265)."""
    wheel: str | None = None
    """A built dist-srec wheel to ship (None: build one from the source checkout, `project`)."""
    project: str | None = None
    """The source checkout to build the wheel from (None: the one this dist-srec runs from)."""
    working_dir: str | None = None
    """A directory uploaded as the job's working directory (run files, configs); None: none."""
    pip: str | None = None
    """A requirements file Ray installs in the job's environment (e.g. requirements/stack.txt), for a
    cluster whose image lacks the stack; None: the cluster's Python as it is."""
    runtime_env: str | None = None
    """A YAML or JSON file of further Ray runtime_env fields (conda, container, env_vars, ...)."""
    env_vars: dict[str, str] = field(default_factory=dict)
    """Environment variables of the job (e.g. {HF_HUB_OFFLINE: "1"})."""
    job_id: str | None = None
    """The job's submission id (None: Ray makes one)."""
    entrypoint_num_cpus: float | None = None
    entrypoint_num_gpus: float | None = None
    entrypoint_memory: int | None = None
    """Bytes reserved for the entrypoint (the driver) on the node it runs on."""
    entrypoint_resources: dict[str, float] = field(default_factory=dict)
    """Custom resources the entrypoint needs (e.g. {head: 1} to pin it to the head)."""
    follow: bool = False
    """Stream the job's logs until it ends; exit 0 only if it SUCCEEDED."""
    timeout_s: float = 86400.0
    """With `follow`: how long to wait for the end."""

    def __post_init__(self) -> None:
        for name in ("wheel", "pip", "runtime_env"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_file():
                raise ConfigError(f"config field '{name}': {value} does not exist")
        for name in ("project", "working_dir"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_dir():
                raise ConfigError(f"config field '{name}': {value} is not a directory")
        if self.wheel is not None and not self.wheel.endswith(".whl"):
            raise ConfigError(f"config field 'wheel': {self.wheel} is not a .whl file")

    @property
    def job_address(self) -> str:
        return self.address or os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265"


def source_checkout() -> Path | None:
    """The checkout this dist-srec was installed from (an editable install), or None (a wheel)."""
    root = Path(dist_srec.__file__).resolve().parents[1]
    return root if all((root / p).exists() for p in PROJECT_SOURCES) else None


def build_wheel(project: str | Path, out_dir: str | Path) -> Path:
    """`pip wheel` of a copy of `project`'s sources into `out_dir`; returns the wheel."""
    project, out_dir = Path(project), Path(out_dir)
    missing = [p for p in PROJECT_SOURCES if not (project / p).exists()]
    if missing:
        raise ConfigError(f"config field 'project': {project} is not a dist-srec checkout (no {missing})")
    src = out_dir / "src"
    for name in PROJECT_SOURCES:
        if (project / name).is_dir():
            shutil.copytree(project / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(parents=True, exist_ok=True)
            shutil.copy2(project / name, src / name)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out_dir),
           str(src)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = " ".join((done.stderr or done.stdout).split())[-600:]
        raise ConfigError(f"building a wheel of {project} failed (it needs setuptools>=77 and wheel; or pass "
                          f"--wheel): {tail}")  # fmt: skip
    (wheel,) = out_dir.glob("dist_srec-*.whl")
    return wheel


def unpack_wheel(wheel: str | Path, dest: str | Path) -> list[str]:
    """Unpack a dist-srec wheel; returns its top-level directories (the package and its .dist-info),
    the job's `py_modules`."""
    dest = Path(dest)
    try:
        with zipfile.ZipFile(wheel) as z:
            z.extractall(dest)
    except (OSError, zipfile.BadZipFile) as e:
        raise ConfigError(f"config field 'wheel': {wheel} is not a readable wheel: {e}") from e
    for need in ("dist_srec/__init__.py", "dist_srec/kernels/__init__.py", "dist_srec/__main__.py"):
        if not (dest / need).is_file():
            raise ConfigError(f"config field 'wheel': {wheel} is not a dist-srec wheel (it lacks {need})")
    return sorted(str(p) for p in dest.iterdir() if p.is_dir())


def job_entrypoint(argv: Sequence[str]) -> str:
    """The job's shell command: `dist-srec ...` runs as `python -m dist_srec ...` (the shipped modules
    have no console script on the cluster); anything else is run as given."""
    argv = list(argv)
    if not argv:
        raise ConfigError("no entrypoint: give the job's command after `--`, e.g. -- dist-srec train ...")
    if argv[0] == "dist-srec":
        argv = ["python", "-m", "dist_srec", *argv[1:]]
    return shlex.join(argv)


def runtime_env(cfg: SubmitConfig, modules: list[str]) -> dict[str, Any]:
    """The job's runtime_env: the `runtime_env` file's fields, the shipped modules, working dir, pip,
    env vars (these flags win over the file)."""
    env: dict[str, Any] = {}
    if cfg.runtime_env is not None:
        env = yaml.safe_load(Path(cfg.runtime_env).read_text()) or {}
        if not isinstance(env, dict):
            raise ConfigError(
                f"config field 'runtime_env': {cfg.runtime_env} is not a mapping of runtime_env fields"
            )
    env["py_modules"] = [*env.get("py_modules", []), *modules]
    if cfg.working_dir is not None:
        env["working_dir"] = str(Path(cfg.working_dir).resolve())
        env["excludes"] = [*env.get("excludes", []), *DEFAULT_EXCLUDES]
    if cfg.pip is not None:
        env["pip"] = str(Path(cfg.pip).resolve())
    if cfg.env_vars or "env_vars" in env:
        env["env_vars"] = {**env.get("env_vars", {}), **cfg.env_vars}
    return env


def submit(cfg: SubmitConfig, entrypoint: Sequence[str], staging: str | Path) -> tuple[Any, str]:
    """Build or take the wheel, stage it under `staging`, submit the job; returns (client, job id)."""
    from ray.job_submission import (
        JobSubmissionClient,  # deferred: Ray takes seconds to import; only the Ray paths need it
    )

    command = job_entrypoint(entrypoint)  # a missing command or server fails before any build
    try:
        client = JobSubmissionClient(cfg.job_address)
    except ConnectionError as e:
        raise ConfigError(f"config field 'address': cannot reach a Ray job server at {cfg.job_address} ({e}); "
                          "start one (`ray start --head`) or pass --address http://HEAD:8265") from e  # fmt: skip
    staging = Path(staging)
    wheel = cfg.wheel
    if wheel is None:
        project = cfg.project or source_checkout()
        if project is None:
            raise ConfigError("this dist-srec is not a source checkout: pass --wheel (a built dist-srec wheel) "
                              "or --project (a checkout)")  # fmt: skip
        wheel = str(build_wheel(project, staging / "build"))
    env = runtime_env(cfg, unpack_wheel(wheel, staging / "modules"))
    job_id = client.submit_job(
        entrypoint=command, runtime_env=env, submission_id=cfg.job_id,
        entrypoint_num_cpus=cfg.entrypoint_num_cpus, entrypoint_num_gpus=cfg.entrypoint_num_gpus,
        entrypoint_memory=cfg.entrypoint_memory, entrypoint_resources=cfg.entrypoint_resources or None,
        metadata={"dist_srec_wheel": Path(wheel).name},
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
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED) or time.monotonic() > end:
            return str(status.value)
        time.sleep(poll_s)
