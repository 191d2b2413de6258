"""Ray Train's runtime around a one-worker ganray run, with no training in it.

    python benchmarks/ray_idle.py --ready FILE --stop FILE [--threads N]

Starts what `ganray train` starts for one worker (its local Ray instance, `GanTrainer` with
ganray's process-group backend and callbacks, one worker holding torch), writes FILE `--ready`
once the worker's function runs, and ends when FILE `--stop` appears or the process that
started it is gone. The worker's function only waits. Beside it, a plain loop shares the
machine with exactly the processes a ganray run keeps beside its own worker (Ray's daemons, Ray
Train's controller and synchronisation actor, the autoscaling coordinator, the driver and the
worker's own Ray threads), so

    plain loop beside this / plain loop alone     what Ray's runtime costs any loop here
    ganray / plain loop beside this               what ganray's worker costs beyond that

(`run.py --only overhead`, "beside Ray" rows). The driver waits in `fit()`, where `ganray train`'s
driver also reads metrics.csv every 2 s; nothing else differs. HELPERS names the instance's
processes that Ray Train does not use (benchmarks/ray_phases.py stops them in some phases).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# Command-line marks of the local instance's processes that no Ray Train job uses: the
# autoscaler's monitor, the API server, the log monitor, the dashboard and runtime-env agents.
# Left are GCS, the raylet, Train's controller and synchronisation actor, Ray's autoscaling
# coordinator (Train's controller registers with it), the driver and the worker.
HELPERS = ("autoscaler/_private/monitor.py", "dashboard/dashboard.py", "_private/log_monitor.py",
           "ray::DashboardAgent", "ray::RuntimeEnvAgent")


def helpers(pids: list[int]) -> dict[str, list[int]]:
    """Those of `pids` whose command line carries one of HELPERS' marks, by mark (marks that
    match nothing are left out)."""
    from ganray import procs

    found: dict[str, list[int]] = {}
    for pid in sorted(pids):
        cmd = procs.command(pid) or ""
        for mark in HELPERS:
            if mark in cmd:
                found.setdefault(mark, []).append(pid)
    return found


def idle_worker(config: dict) -> None:
    import torch  # as ganray's worker holds it (its threads, allocator and libraries loaded)

    from ganray import procs

    torch.set_num_threads(config["threads"])
    Path(config["ready"]).write_text("ready\n")
    stop, owner = Path(config["stop"]), config.get("owner")
    while not stop.exists() and (owner is None or procs.alive(owner)):  # or the benchmark is gone
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ready", required=True, help="file written once the worker's function runs")
    p.add_argument("--stop", required=True, help="file whose appearance ends the job")
    p.add_argument("--threads", type=int, default=1, help="the worker's torch threads (it computes nothing)")
    args = p.parse_args(argv)

    import ray.train

    from ganray import procs
    from ganray.backend import ProcessGroupConfig
    from ganray.instance import ensure_ray, owns_ray_instance
    from ganray.trainer import GanTrainer

    parent = os.getppid()  # the benchmark that started this job: it ends with it
    owner = (parent, procs.start_time(parent))
    ensure_ray(1)
    with tempfile.TemporaryDirectory(prefix="ganray-idle-") as storage:
        GanTrainer(
            idle_worker,
            placement_group_cleaner=not owns_ray_instance(),
            train_loop_config={"ready": args.ready, "stop": args.stop, "threads": args.threads, "owner": owner},
            scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
            backend_config=ProcessGroupConfig(backend="gloo"),
            run_config=ray.train.RunConfig(name="idle", storage_path=storage),
        ).fit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
