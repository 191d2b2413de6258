"""Start-up timing: when each phase from `ganray train` (or a Tune trial) to the first step ended.

The driver records its marks (time.time()) in the loop config, rank 0 adds its own and writes
them to the run folder's timing.json; `startup_breakdown` turns them into seconds per phase for
summary.json and the benchmarks (BENCHMARKS.md, start-up).
"""

from __future__ import annotations

import os
import time


def process_start() -> float | None:
    """When this process started (time.time() scale), so start-up includes interpreter and imports.

    Linux: /proc/self/stat's start time (clock ticks since boot) plus the boot time derived from
    /proc/uptime, good to ~10 ms (psutil uses the whole-second btime instead). None elsewhere.
    """
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


# (phase, from mark, to mark): the driver records the first five marks, rank 0 the last four.
STARTUP_PHASES = [
    ("imports_s", "process_start", "cmd"),
    ("ray_start_s", "cmd", "ray_ready"),
    ("trial_imports_s", "trial_start", "prepare_start"),  # a Tune trial's driver function
    ("dataset_s", "prepare_start", "dataset_ready"),
    ("eval_prepare_s", "dataset_ready", "prepared"),
    ("trainer_build_s", "prepared", "fit_start"),
    ("worker_group_start_s", "fit_start", "worker_start"),
    ("worker_setup_s", "worker_start", "loop_ready"),
    ("first_batch_s", "loop_ready", "first_batch"),
    ("first_step_s", "first_batch", "first_step"),
]


def startup_breakdown(marks: dict[str, float | None]) -> dict[str, float]:
    """Seconds per start-up phase from timing.json's timestamps; total_s: first mark to first step."""
    out = {name: round(marks[b] - marks[a], 3) for name, a, b in STARTUP_PHASES if marks.get(a) and marks.get(b)}
    start = marks.get("process_start") or marks.get("cmd") or marks.get("trial_start") or marks.get("prepare_start")
    if start and marks.get("first_step"):
        out["total_s"] = round(marks["first_step"] - start, 3)
    return out
