"""Ray Train's runtime around a one-worker ganray run, with no training in it.

    python benchmarks/ray_idle.py --ready FILE --stop FILE [--threads N] [--pause-helpers]

Starts what `ganray train` starts for one worker (its local Ray instance, `GanTrainer` with
ganray's process-group backend and callbacks, one worker holding torch), writes FILE `--ready`
once the worker's function runs, and ends when FILE `--stop` appears. The worker's function
only waits. Beside it, a plain loop shares the machine with exactly the processes a ganray run
keeps beside its own worker (Ray's daemons, Ray Train's controller and synchronisation actor,
the autoscaling coordinator, the driver and the worker's own Ray threads), so

    plain loop beside this / plain loop alone     what Ray's runtime costs any loop here
    ganray / plain loop beside this               what ganray's worker costs beyond that

(`run.py --only overhead`, "beside Ray" rows). The driver waits in `fit()`, where `ganray train`'s
driver also reads metrics.csv every 2 s; nothing else differs.

With --pause-helpers, the instance's processes that neither Ray Train nor the training needs
(HELPERS: the autoscaler's monitor, the API server, the log monitor, the dashboard and runtime-env
agents) are stopped (SIGSTOP) from just before FILE --ready is written until FILE --stop appears.
What runs then is the least any Ray Train job has beside its worker: GCS, the raylet, the
controller, the synchronisation actor, the autoscaling coordinator and the driver
(`run.py --only floor`). An experiment, not a way to run: paused, they answer nothing.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# Command-line marks of the instance's processes that a Ray Train job does not use.
HELPERS = ("autoscaler/_private/monitor.py", "dashboard/dashboard.py", "_private/log_monitor.py",
           "ray::DashboardAgent", "ray::RuntimeEnvAgent")


def idle_worker(config: dict) -> None:
    import torch  # as ganray's worker holds it (its threads, allocator and libraries loaded)

    torch.set_num_threads(config["threads"])
    Path(config["worker_ready"]).write_text("ready\n")
    stop = Path(config["stop"])
    while not stop.exists():
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ready", required=True, help="file written once the worker's function runs")
    p.add_argument("--stop", required=True, help="file whose appearance ends the job")
    p.add_argument("--threads", type=int, default=1, help="the worker's torch threads (it computes nothing)")
    p.add_argument("--pause-helpers", action="store_true",
                   help="SIGSTOP the instance's processes that Ray Train does not use while the worker waits")
    args = p.parse_args(argv)

    import ray.train

    from ganray.backend import ProcessGroupConfig
    from ganray.instance import ensure_ray, owns_ray_instance
    from ganray.trainer import GanTrainer

    ensure_ray(1)
    worker_ready = f"{args.ready}.worker"
    Path(worker_ready).unlink(missing_ok=True)
    paused: list[int] = []
    watch = threading.Thread(target=_announce, args=(worker_ready, args.ready, args.stop, args.pause_helpers, paused),
                             daemon=True)
    watch.start()
    try:
        with tempfile.TemporaryDirectory(prefix="ganray-idle-") as storage:
            GanTrainer(
                idle_worker,
                placement_group_cleaner=not owns_ray_instance(),
                train_loop_config={"worker_ready": worker_ready, "stop": args.stop, "threads": args.threads},
                scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                backend_config=ProcessGroupConfig(backend="gloo"),
                run_config=ray.train.RunConfig(name="idle", storage_path=storage),
            ).fit()
    finally:
        _signal(paused, signal.SIGCONT)
        Path(worker_ready).unlink(missing_ok=True)
    return 0


def _announce(worker_ready: str, ready: str, stop: str, pause: bool, paused: list[int]) -> None:
    """Write `ready` once the worker runs (pausing the helpers first if asked), and resume them
    as soon as `stop` appears, so that the job ends as it would have."""
    while not Path(worker_ready).exists():
        time.sleep(0.1)
    if pause:
        paused += helper_pids()
        _signal(paused, signal.SIGSTOP)
        print(f"paused {len(paused)} helper process(es): {paused}", flush=True)
    Path(ready).write_text("ready\n")
    while not Path(stop).exists():
        time.sleep(0.5)  # as the worker's own wait
    _signal(paused, signal.SIGCONT)


def helper_pids() -> list[int]:
    """This driver's instance's processes whose command line carries one of HELPERS' marks."""
    from ganray import procs

    found = []
    for pid, _ in sorted(procs.tree(procs.children())):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(mark in cmd for mark in HELPERS):
            found.append(pid)
    return found


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit(main())
