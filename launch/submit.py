"""`dist-srec submit` as a script: run a command as a Ray job that ships this project (a wheel built from
this checkout, in the job's runtime env). Flags: `python launch/submit.py --help`.

    RAY_AUTH_MODE=disabled ray start --head --node-ip-address 127.0.0.1 --num-cpus 2
    python launch/submit.py --address http://127.0.0.1:8265 --follow true -- \\
        dist-srec launch train --config run.yaml --out file:///tmp/runs/srec --ray.num_workers 2
"""

from __future__ import annotations

import sys

from dist_srec.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["submit", *sys.argv[1:]]))
