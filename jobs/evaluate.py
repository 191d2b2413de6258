"""Evaluate a run or checkpoint on the cluster this job runs on; same flags as `ganray eval`.

    ray job submit --working-dir . -- python jobs/evaluate.py --checkpoint s3://BUCKET/runs/NAME --metrics fid,kid

(Ray's CLI sends the cluster's token only when RAY_AUTH_MODE=token is set.) `ganray submit` sets
that, installs ganray's dependencies unless told not to, and exits with the job's outcome:

    ganray submit jobs/evaluate.py -- --checkpoint s3://BUCKET/runs/NAME --metrics fid,kid

Inside a job RAY_ADDRESS is set, so ganray connects to the job's cluster instead of starting one.
"""

import sys

from ganray.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
