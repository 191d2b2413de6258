"""Train a GAN on the Ray cluster this job runs on; same flags as `ganray train`.

    ray job submit --working-dir . -- python jobs/train.py --data s3://BUCKET/mnist --workers 8 --set run.out=s3://BUCKET/runs

(Ray's CLI sends the cluster's token only when RAY_AUTH_MODE=token is set.) `ganray submit` sets
that, installs ganray's dependencies unless told not to, and exits with the job's outcome:

    ganray submit jobs/train.py -- --data s3://BUCKET/mnist --workers 8 --set run.out=s3://BUCKET/runs

Inside a job RAY_ADDRESS is set, so ganray connects to the job's cluster instead of starting one.
"""

import sys

from ganray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
