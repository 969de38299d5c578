"""`dist-srec submit [options] -- COMMAND...`: run COMMAND as a Ray job that ships this project
(`dist_srec.cluster.submit`); prints the job id and the commands to follow, query and stop it."""

from __future__ import annotations

import tempfile

from jsonargparse import ArgumentParser, Namespace

from dist_srec.cli.command import Command, parser
from dist_srec.cluster.submit import SubmitConfig, follow_logs, submit, wait
from dist_srec.config import from_namespace


def _parser() -> ArgumentParser:
    p = parser("Submit a command to a Ray cluster as a job that ships this project (a wheel in its runtime "
               "env): everything after `--` is the job's command; `dist-srec ...` runs as `python -m dist_srec`.", [
        "dist-srec submit --address http://HEAD:8265 --follow true -- dist-srec launch train --config run.yaml "
        "--data s3://bucket/data --out s3://bucket/runs/srec --ray.address auto --ray.use_gpu true",
        "dist-srec submit --wheel dist/dist_srec-0.1.0-py3-none-any.whl --working_dir configs "
        "--env_vars '{HF_HUB_OFFLINE: \"1\"}' -- dist-srec launch train --config run.yaml",
        "dist-srec submit --pip requirements/stack.txt --entrypoint_num_cpus 1 -- dist-srec recommend-batch "
        "--ckpt s3://bucket/runs/srec/best --users all --k 100 --out /tmp/recs --ray.address auto",
    ], run_file=True)  # fmt: skip
    p.add_class_arguments(SubmitConfig, None, fail_untyped=False)
    p.add_argument("entrypoint", nargs="*", type=str, help="the job's command, after `--`")
    return p


def _submit(p: ArgumentParser, ns: Namespace) -> int:
    cfg = from_namespace(SubmitConfig, p, ns)
    with tempfile.TemporaryDirectory(prefix="dist-srec-submit-") as staging:
        client, job_id = submit(cfg, ns.entrypoint, staging)  # the upload is done when this returns
    addr = cfg.job_address
    print(f"submitted job {job_id} to {addr}")
    print(f"  follow its logs:  ray job logs --address {addr} --follow {job_id}")
    print(f"  its status:       ray job status --address {addr} {job_id}")
    print(f"  stop it:          ray job stop --address {addr} {job_id}")
    if not cfg.follow:
        return 0
    follow_logs(client, job_id)
    status = wait(client, job_id, timeout_s=cfg.timeout_s)
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


COMMANDS = [Command("submit", "run a command as a Ray job that ships this project", _parser, _submit)]
