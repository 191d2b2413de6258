"""Run a hyperparameter search on the cluster this job runs on; same flags as `ganray tune`.

    ray job submit --working-dir . -- python jobs/tune.py --data s3://BUCKET/mnist --set run.out=s3://BUCKET/tune

(Ray's CLI sends the cluster's token only when RAY_AUTH_MODE=token is set.) `ganray submit` sets
that, installs ganray's dependencies unless told not to, and exits with the job's outcome:

    ganray submit jobs/tune.py -- --data s3://BUCKET/mnist --set run.out=s3://BUCKET/tune

Inside a job RAY_ADDRESS is set, so ganray connects to the job's cluster instead of starting one.
"""

import sys

from ganray.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
