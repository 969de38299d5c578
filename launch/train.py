"""Train on Ray Train workers: `dist-srec launch ...` as a script (for `ray job submit` and clusters).

    # laptop: a local Ray cluster on CPU (gloo), 2 workers, the LLM under ZeRO-3
    DS_ACCELERATOR=cpu python launch/train.py train --data data/ml-100k --teacher runs/teacher/best \\
        --llm smollm2 --out runs/srec --workers 2 --local-cpus 2 --zero-stage 3
    # GPU cluster (nccl): connect to the running cluster, one GPU per worker
    python launch/train.py train --data /shared/amazon2023 --teacher /shared/teacher/best \\
        --llm /shared/Llama-3.2-3B-Instruct --out /shared/runs/srec --workers 16 --gpu --zero-stage 3 \\
        --storage-path /shared/ray --max-failures 3 --address auto
    # teacher pre-training with DDP
    python launch/train.py pretrain-teacher --data data/ml-100k --out runs/teacher --workers 2

Flags: `python launch/train.py train --help`. Re-running with the same --name and storage resumes.
"""

from __future__ import annotations

import sys

from dist_srec.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["launch", *sys.argv[1:]]))
