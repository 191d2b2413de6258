"""Fault-injection hooks for the reliability tests, driven by GANRAY_FAULT_* variables.

Off unless a variable is set; the launcher forwards these variables to the workers.
- GANRAY_FAULT_NAN_STEPS="a-b"   rank 0 feeds NaN images to D at steps a..b (a NaN loss)
- GANRAY_FAULT_NAN_WEIGHT_AT=s   rank 0 sets one G weight to NaN before step s
- GANRAY_FAULT_KILL_AT=s         rank GANRAY_FAULT_KILL_RANK (default 0) SIGKILLs itself at step s,
                                 once: GANRAY_FAULT_MARKER names a file created just before
- GANRAY_FAULT_RAISE_AT=s        rank GANRAY_FAULT_KILL_RANK raises RuntimeError at step s (every attempt)
- GANRAY_FAULT_NAN_ONCE=1        the NaN faults fire at most once per step in a worker process, so a
                                 NaN rollback replays those steps cleanly (a transient fault); unset,
                                 they fire every time the step is reached (a persistent one)
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the driver imports this module for forwarded_env: no torch there
    import torch

PREFIX = "GANRAY_FAULT_"


def forwarded_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(PREFIX)}


def _int(name: str) -> int | None:
    v = os.environ.get(PREFIX + name)
    return int(v) if v not in (None, "") else None


def _target_rank() -> int:
    return _int("KILL_RANK") or 0


_fired: set[tuple[str, int]] = set()


def _first_time(kind: str, step: int) -> bool:
    if not _int("NAN_ONCE"):
        return True
    if (kind, step) in _fired:
        return False
    _fired.add((kind, step))
    return True


def nan_batch(step: int, rank: int) -> bool:
    span = os.environ.get(PREFIX + "NAN_STEPS")
    if not span or rank != 0:
        return False
    lo, _, hi = span.partition("-")
    return int(lo) <= step <= int(hi or lo) and _first_time("batch", step)


def maybe_poison_weight(G: torch.nn.Module, step: int, rank: int) -> None:
    if rank == 0 and _int("NAN_WEIGHT_AT") == step and _first_time("weight", step):
        import torch

        with torch.no_grad():
            next(G.parameters()).view(-1)[0] = float("nan")


def maybe_die(step: int, rank: int) -> None:
    if rank != _target_rank():
        return
    if _int("RAISE_AT") == step:
        raise RuntimeError(f"injected failure at step {step} on rank {rank}")
    if _int("KILL_AT") == step:
        marker = os.environ.get(PREFIX + "MARKER")
        if marker and Path(marker).exists():
            return
        if marker:
            Path(marker).write_text(str(step))
        os.kill(os.getpid(), signal.SIGKILL)
