"""The Ray instance a run uses: join the one named by an address, or start a local one that
ends with the process, and know which of the two it is (`owns_ray_instance`)."""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from typing import Any

from ganray import procs


def ensure_ray(num_workers: int, *, address: str | None = None, quiet: bool = True) -> None:
    """Connect to the cluster named by RAY_ADDRESS/--address, else start a local instance.

    A local instance advertises one logical CPU more than the workers need, so Ray Data
    tasks always have a slot next to the training workers (otherwise they can starve).
    The dashboard stays off locally (faster start); when on, Ray binds it to 127.0.0.1.
    """
    import ray

    _quiet_ray_data()
    if ray.is_initialized():
        return
    global _owned_gcs
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = dict(log_to_driver=not quiet, configure_logging=True, logging_level="ERROR")
    if address:
        ray.init(address=address, **kwargs)
        return
    cpus = os.cpu_count() or 1
    # One local node, which nothing drains: Ray Train's preemption watcher (one more actor
    # process per worker group) would only compete for the CPUs while the workers start.
    # Set before ray.init so that Tune trials' drivers inherit it too.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    # No idle worker processes kept in Ray's pool (by default as many as there are free CPUs,
    # here one beside a 1-worker run): each wakes 100 times a second on the cores the training
    # uses (BENCHMARKS.md, "What the misses are made of"). Ray stops one idle for 1 s; a later
    # task or actor starts a process as it would for any new runtime env.
    start_local_ray(num_cpus=max(cpus, num_workers) + 1, include_dashboard=False,
                    _system_config={"num_workers_soft_limit": 0}, **kwargs)
    _owned_gcs = ray.get_runtime_context().gcs_address
    _start_autoscaling_coordinator()


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C raises KeyboardInterrupt."""


def sigterm_as_interrupt() -> None:
    """From now on SIGTERM raises `Terminated` in the main thread, so that a driver stopped by
    a scheduler (`timeout`, SLURM, Kubernetes) ends as one stopped by Ctrl-C:
    its exit handlers run, and a local instance ends with everything it started. Call it after
    `ray.init`: Ray's core worker replaces Python's SIGTERM handler with one that logs a stack
    and dies on the spot, running no exit handler. Does nothing outside the main thread."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def _raise_terminated(signum, frame):
    raise Terminated(f"signal {signum}")


REAP_GRACE_S = 5.0  # how long a local instance's processes get to end after Ray's shutdown
_local_daemons: set[procs.Proc] | None = None  # the processes ray.init started for it


def start_local_ray(**init_kwargs: Any) -> None:
    """`ray.init` a local instance that ends with this process, with everything it started.

    Ray's own exit shuts down the daemons it started (GCS, raylet, agents, monitors), and its
    workers normally end with the raylet. A worker can fail to: one Ray Train controller
    deadlocked in Ray's C++ exit handlers and outlived its instance by half an hour
    (RELIABILITY.md); and a process that a worker started in a session of its own survives
    Ray's kill of the worker's process group. So the daemons are recorded here (the children
    ray.init adds to this process), and at exit, or at `shutdown_local_ray`, their whole process
    tree is taken just before Ray's shutdown, and what is left of it REAP_GRACE_S later is
    killed, with a warning naming it. A process orphaned earlier (its parent ended mid-run) has
    left the tree by then and is not followed.
    """
    import ray

    global _local_daemons
    before = procs.children()
    ray.init(**init_kwargs)
    _local_daemons = procs.children() - before
    atexit.unregister(shutdown_local_ray)
    atexit.register(shutdown_local_ray)  # runs before ray.init's own atexit shutdown (LIFO)


def shutdown_local_ray() -> list[tuple[int, str]]:
    """Shut down the instance `start_local_ray` started and everything it started; returns the
    (pid, command) of each process that had to be killed. Does nothing if none is running."""
    import ray

    global _local_daemons, _owned_gcs
    if _local_daemons is None:
        return []
    everything = procs.tree(_local_daemons)
    _local_daemons = _owned_gcs = None
    try:
        ray.shutdown()
    finally:
        killed = procs.reap(everything, REAP_GRACE_S)
    if killed:
        print(f"ganray: killed {len(killed)} process(es) that outlived the local Ray instance "
              f"{REAP_GRACE_S:g} s after its shutdown: " + ", ".join(f"{pid} ({name})" for pid, name in killed),
              file=sys.stderr)
    return killed


_owned_gcs: str | None = None  # the local instance ensure_ray started, by its GCS address


def owns_ray_instance() -> bool:
    """Whether this process started the Ray instance it is connected to (`ensure_ray`'s local
    instance, which ends with the process), so that nothing a run leaves behind can outlive it."""
    import ray

    return ray.is_initialized() and _owned_gcs is not None and ray.get_runtime_context().gcs_address == _owned_gcs


def _start_autoscaling_coordinator() -> None:
    """Start Ray's autoscaling coordinator now, while the driver prepares data and evaluation.

    Ray Train's controller registers its resource request with this named, detached actor
    (shared with Ray Data) and blocks until it answers; created by the controller, it needs a
    new worker process (~1.3 s here, on the start-up's critical path), because the controller's
    children carry its runtime env. Created here it takes one of the idle workers Ray prestarts
    with a fresh instance, and the controller finds it running. Ray's own get-or-create is used,
    so nothing differs afterwards; if a Ray release moves it, the controller creates it as before.
    """
    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )
    except ImportError:
        return
    get_or_create_autoscaling_coordinator()


def _quiet_ray_data() -> None:
    """Ray Data's per-dataset banners would break the single progress line; its logs stay in files."""
    import logging

    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
