"""Processes by pid and start time, read from /proc: who a process started, and an end for a
process tree that outlives its root.

A pid alone can be reused; (pid, start time in clock ticks since boot) names one process for
the machine's uptime. Off Linux (no /proc) every function here finds nothing, so callers
simply do less.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

Proc = tuple[int, int]  # (pid, start time)


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; None if it is gone (or no /proc)."""
    stat = _stat(pid)
    return None if stat is None else int(stat[19])


def alive(proc: Proc) -> bool:
    """Whether that very process still runs (a zombie counts as gone)."""
    stat = _stat(proc[0])
    return stat is not None and int(stat[19]) == proc[1] and stat[0] != "Z"


def children(pid: int | None = None) -> set[Proc]:
    """The live child processes of `pid` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    return {(p, int(stat[19])) for p, stat in _all_stats() if int(stat[1]) == pid and stat[0] != "Z"}


def tree(roots: set[Proc]) -> set[Proc]:
    """`roots` that still run and all their live descendants."""
    stats = list(_all_stats())
    by_parent: dict[int, list[Proc]] = {}
    for p, stat in stats:
        if stat[0] != "Z":
            by_parent.setdefault(int(stat[1]), []).append((p, int(stat[19])))
    found = {r for r in roots if alive(r)}
    todo = [pid for pid, _ in found]
    while todo:
        for child in by_parent.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child[0])
    return found


def reap(procs: set[Proc], grace_s: float) -> list[tuple[int, str]]:
    """Wait up to `grace_s` for `procs` to end by themselves, then SIGKILL the ones left.
    Returns (pid, name) of each process killed."""
    deadline = time.monotonic() + grace_s
    left = {p for p in procs if alive(p)}
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = {p for p in left if alive(p)}
    killed = []
    for proc in sorted(left):
        name = _name(proc[0])
        if not alive(proc):  # ended since the last look: its pid may be another process's now
            continue
        try:
            os.kill(proc[0], signal.SIGKILL)
        except OSError:
            continue
        killed.append((proc[0], name))
    return killed


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: [state, ppid, ...]."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    return stat[stat.rindex(")") + 2:].split()


def _all_stats():
    try:
        entries = os.listdir("/proc")
    except OSError:
        return
    for entry in entries:
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                yield int(entry), stat


def command(pid: int) -> str | None:
    """The process's command line as `ps` shows it (Ray sets its workers' to `ray::Name`); None
    if it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of those of `pids` still running, in seconds."""
    stats = (_stat(pid) for pid in pids)
    return sum(int(st[11]) + int(st[12]) for st in stats if st is not None) / os.sysconf("SC_CLK_TCK")


def _name(pid: int) -> str:
    """`command`, shortened for a message."""
    return (command(pid) or "")[:200] or "?"
