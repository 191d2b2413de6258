"""Cores of their own for a worker's compute threads, when its node has cores to spare.

A worker that leaves cores free (1 worker with 1 thread on 2 cores, 2 x 3 on 8, ...) still
shares its training core with Ray's processes: a waking task goes back to the core it last ran
on whenever Linux counts that core as idle, and under `SCHED_IDLE` (which some VMs run every
process in) a core running only the training thread counts as idle. The training thread is then
preempted 170-190 times a second and moved between cores ~20 times a second (BENCHMARKS.md, "What
the misses are made of"). Pinned to its own cores, it cannot be moved, so those tasks are
balanced to the free cores and stay there: preemptions drop to 4-7 a second.

The pin covers the thread that calls `pin_compute_threads` (Ray Train's training thread) and
every thread and process it starts afterwards (torch's intra-op pool; `torch.compile`'s
compile workers too): like `numactl` binding per rank, but the worker's Ray threads keep the
whole node. Workers on a node coordinate through a claims file (flock) in the temporary
directory: each takes free cores from the top (core 0 takes most device interrupts), claims of
dead processes lapse, and a group pins only if at least one core stays unclaimed for everything
else on the node. Never pinned: where the cgroup's CPU bandwidth limit is below the cores the
process may use (containers without a cpuset, whose cores other containers share), and off Linux.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ganray.procs import start_time

CLAIMS_FILE = "ganray-cpus-{uid}.json"


def supported() -> bool:
    return hasattr(os, "sched_setaffinity") and os.path.exists("/proc/self/stat")


def pinnable_cores() -> list[int] | None:
    """The cores this process may pin to, or None where ganray never pins: off Linux, and under a
    cgroup CPU bandwidth limit below them (cores other containers share)."""
    if not supported():
        return None
    allowed = sorted(os.sched_getaffinity(0))
    quota = cpu_quota()
    return None if quota is not None and quota < len(allowed) else allowed


def resolve(setting: str, owns_instance: bool) -> bool:
    """train.cpu_affinity -> whether to pin: "auto" pins on a local instance ganray started
    (its machine is the run's own); "on" also on clusters whose nodes run nothing else."""
    return setting == "on" or (setting == "auto" and owns_instance)


@contextlib.contextmanager
def pinned(enabled: bool, threads: int, *, group: str, local_world: int,
           claims_dir: str | Path | None = None) -> Iterator[list[int] | None]:
    """Pin the calling thread for the block (see `pin_compute_threads`); yields its cores or None."""
    cores = pin_compute_threads(threads, group=group, local_world=local_world, claims_dir=claims_dir) if enabled else None
    try:
        yield cores
    finally:
        if cores is not None:
            release(claims_dir)
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, os.sched_getaffinity(os.getpid()))


def pin_compute_threads(threads: int, *, group: str, local_world: int,
                        claims_dir: str | Path | None = None) -> list[int] | None:
    """Claim `threads` cores for this process and pin the calling thread to them.

    `group`: the same string for the workers of one run (a trial's workers coordinate by it);
    `local_world`: how many of the group's workers this node holds. The group pins only if
    `local_world * threads` cores fit beside other groups' claims with one core to spare.
    Returns the cores, or None when not pinned; never raises for lack of support or room.
    """
    if threads < 1:
        return None
    try:
        allowed = pinnable_cores()
        if allowed is None:
            return None
        with _locked_claims(claims_dir) as claims:
            pid = os.getpid()
            claims[:] = [c for c in claims if c["pid"] != pid and start_time(c["pid"]) == c["start"]]
            cores = choose_cores(allowed, claims, group, threads, local_world)
            if cores is not None:
                claims.append({"pid": pid, "start": start_time(pid), "group": group, "cores": cores})
        if cores is not None:
            os.sched_setaffinity(0, cores)
        return cores
    except (OSError, ValueError, IndexError):  # an unreadable /proc or claims file: not pinned
        return None


def choose_cores(allowed: list[int], claims: list[dict], group: str, threads: int, local_world: int) -> list[int] | None:
    """The cores a worker of `group` takes, given the node's live claims; None: no room to pin.

    The group's `local_world` workers must fit beside other groups' claims with a core to spare
    (judged alike by each of them, whatever their order); each takes the highest free cores. The
    group's own claims count too where they outnumber `local_world`: Ray nodes on one machine
    under different IPs (Ray Train counts a node's workers by IP).
    """
    mine = {core for c in claims if c["group"] == group for core in c["cores"]} & set(allowed)
    others = {core for c in claims if c["group"] != group for core in c["cores"]} & set(allowed)
    free = [core for core in sorted(allowed) if core not in mine | others]
    need = max(local_world * threads, len(mine) + threads)
    if len(allowed) - len(others) - need < 1 or len(free) < threads:
        return None
    return free[-threads:]


def release(claims_dir: str | Path | None = None) -> None:
    """Drop this process's claim (a claim of a process that ended lapses by itself)."""
    with contextlib.suppress(OSError), _locked_claims(claims_dir) as claims:
        claims[:] = [c for c in claims if c["pid"] != os.getpid()]


def claims_path(claims_dir: str | Path | None = None) -> Path:
    return Path(claims_dir or tempfile.gettempdir()) / CLAIMS_FILE.format(uid=os.getuid())


@contextlib.contextmanager
def _locked_claims(claims_dir: str | Path | None) -> Iterator[list[dict]]:
    """The node's claims under an exclusive lock; the list as left by the block is written back."""
    import fcntl  # POSIX only; `supported()` is False off Linux

    path = claims_path(claims_dir)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(fd, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, or when the process dies
        try:
            claims = json.loads(f.read() or "[]")
            claims = [c for c in claims if _valid(c)] if isinstance(claims, list) else []
        except ValueError:  # a file cut short by a crash mid-write: its claims lapse
            claims = []
        yield claims
        f.seek(0)
        f.truncate()
        f.write(json.dumps(claims))


def _valid(c) -> bool:
    return (isinstance(c, dict) and isinstance(c.get("pid"), int) and isinstance(c.get("start"), int)
            and isinstance(c.get("group"), str) and isinstance(c.get("cores"), list)
            and all(isinstance(x, int) for x in c["cores"]))


def cpu_quota(root: str | Path = "/sys/fs/cgroup", proc_cgroup: str | None = None) -> float | None:
    """CPUs the process's cgroup bandwidth limit allows (v2 `cpu.max`, v1 CFS quota), the
    tightest along its cgroup path; None when unlimited or unknown."""
    root = Path(root)
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    limits = []
    for line in proc_cgroup.splitlines():
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        names = controllers.split(",")
        if controllers == "":
            bases, read = [root, root / "unified"], _read_v2
        elif "cpu" in names:
            bases, read = [root / controllers, root / "cpu"], _read_v1
        else:
            continue
        parts = [p for p in path.strip().split("/") if p]
        for base in dict.fromkeys(bases):
            for depth in range(len(parts) + 1):
                limit = read(base.joinpath(*parts[:depth]))
                if limit is not None:
                    limits.append(limit)
    return min(limits) if limits else None


def _read_v2(d: Path) -> float | None:
    try:
        quota, period = (d / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else _ratio(quota, period)


def _read_v1(d: Path) -> float | None:
    try:
        quota, period = (d / "cpu.cfs_quota_us").read_text(), (d / "cpu.cfs_period_us").read_text()
    except OSError:
        return None
    return None if quota.strip() == "-1" else _ratio(quota, period)


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None
