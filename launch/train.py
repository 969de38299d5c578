"""Train on Ray Train workers: `dist-srec launch ...` as a script (for `ray job submit` and clusters).

    # laptop: a local Ray cluster on CPU (gloo), 2 workers, the LLM under ZeRO-3
    DS_ACCELERATOR=cpu python launch/train.py train --data data/ml-100k --teacher runs/teacher/best \\
        --out runs/srec --ray.num_workers 2 --ray.local_cpus 2 --deepspeed.stage 3
    # GPU cluster (nccl): connect to the running cluster, one GPU per worker
    python launch/train.py train --config run.yaml --llm.path /shared/Llama-3.2-3B-Instruct \\
        --out /shared/runs/srec --ray.num_workers 16 --ray.use_gpu true --deepspeed.stage 3 \\
        --ray.storage_path /shared/ray --ray.max_failures 3 --ray.address auto
    # teacher pre-training with DDP
    python launch/train.py pretrain-teacher --data data/ml-100k --out runs/teacher --ray.num_workers 2

Flags: `python launch/train.py train --help`. Re-running with the same --ray.name and storage resumes.
"""

from __future__ import annotations

import sys

from dist_srec.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["launch", *sys.argv[1:]]))
