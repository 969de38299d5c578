"""Submit a command to a Ray cluster (Ray Jobs SDK); prints the job id and how to follow its logs.

    # start a throwaway local cluster, then submit the smoke training run to it
    RAY_AUTH_MODE=disabled ray start --head --node-ip-address 127.0.0.1 --num-cpus 2
    python launch/submit.py --address http://127.0.0.1:8265 --follow -- \\
        python launch/train.py train --data data/ml-100k --teacher runs/teacher/best --llm.path tiny \\
        --out runs/srec-job --ray.num_workers 2 --loop.max_steps 5
    ray stop

    # batch recommendation (top-100 for every user) on 2 Ray actors of the running cluster; absolute
    # paths, since the job runs in an uploaded copy of the repository without runs/
    python launch/submit.py --address http://127.0.0.1:8265 --follow -- \\
        python -m dist_srec recommend-batch --ckpt "$PWD/runs/srec/best" --users all --k 100 \\
        --out "$PWD/runs/recs" --ray.num_workers 2 --ray.address auto --progress false

    # a GPU cluster, installing the pinned stack in the job's environment
    python launch/submit.py --address http://HEAD:8265 --pip requirements/stack.txt -- \\
        python launch/train.py train ... --ray.use_gpu true --deepspeed.stage 3 --ray.storage_path /shared/ray

Everything after `--` is the job's entrypoint, run in an uploaded copy of --working-dir (default: this
repository, without .venv, runs, data and caches).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from dist_srec.cluster.submit import SubmitConfig, follow_logs, submit, wait

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("usage: submit.py [options] -- ENTRYPOINT...", file=sys.stderr)
        return 2
    cut = argv.index("--")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--address", default="http://127.0.0.1:8265")
    p.add_argument("--working-dir", default=str(REPO))
    p.add_argument("--pip", help="requirements file installed in the job's environment")
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the job (repeatable)")
    p.add_argument("--job-id")
    p.add_argument("--follow", action="store_true", help="stream the logs; exit with the job's status")
    p.add_argument("--wait", action="store_true", help="wait for the end without streaming logs")
    args = p.parse_args(argv[:cut])
    cfg = SubmitConfig(
        address=args.address, entrypoint=shlex.join(argv[cut + 1 :]), working_dir=args.working_dir,
        pip=args.pip, env_vars=dict(kv.split("=", 1) for kv in args.env), job_id=args.job_id,
    )  # fmt: skip
    client, job_id = submit(cfg)
    print(f"submitted job {job_id} to {args.address}")
    print(f"follow its logs:  ray job logs --address {args.address} --follow {job_id}")
    print(f"its status:       ray job status --address {args.address} {job_id}")
    if not (args.follow or args.wait):
        return 0
    if args.follow:
        follow_logs(client, job_id)
    status = wait(client, job_id)
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(main())
