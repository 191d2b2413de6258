"""Faults during training: killed workers and drivers, corrupt checkpoints, NaNs, full disks.

Unit tests first (no Ray), then tiny end-to-end runs on the shared `ray_session` with the
GANRAY_FAULT_* hooks (ganray/faults.py), which the launcher forwards to the workers.
The driver-kill test runs `ganray train` as a subprocess with its own local Ray, found again
by an environment marker and cleaned up by pid. RELIABILITY.md lists which test covers
which fault.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ganray import checkpoint as ckpt_io
from ganray.checkpoint import CheckpointError, list_checkpoints, load_state
from ganray.cli import main
from ganray.config import debug
from ganray.runfolder import RunFolder

# 16 images per step: a report every 2 steps, a checkpoint every 4 (so 4 and 8 in an 8-step run).
TINY = ["--preset", "debug", "--set", "eval.features=none", "--quiet", "--data", "digits",
        "--set", "train.report_every_kimg=0.032", "--set", "train.checkpoint_every_kimg=0.064"]


def _steps(run_dir: Path) -> list[int]:
    with open(run_dir / "metrics.csv") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def _rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _assert_same_params(a: dict, b: dict, atol: float = 1e-6) -> None:
    for net in ("G", "D", "G_ema"):
        assert a[net].keys() == b[net].keys()
        for k in a[net]:
            torch.testing.assert_close(a[net][k], b[net][k], rtol=0, atol=atol, msg=f"{net}.{k}")


def _evil_state(path: Path, marker: Path) -> None:
    """A state.pt whose unpickling would run a shell command that creates `marker`."""

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "ganray-state-v1", "G": Evil()}, path)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# --------------------------------------------------------------------------------------------
# Checkpoint files: truncated, corrupted, or holding pickled code (no Ray).


@pytest.fixture(scope="module")
def tiny_state():
    from ganray.state import build_state

    cfg = debug()
    st = build_state(cfg, None, torch.device("cpu"))
    st.step, st.images_seen = 4, 64
    return cfg, st


def _save(directory: Path, cfg, st) -> Path:
    return ckpt_io.save(directory, st.state_dict(), cfg, st.sampler().state_dict())


def test_truncated_checkpoint_is_refused_naming_the_file(tmp_path, tiny_state):
    d = _save(tmp_path / "checkpoint_00000004", *tiny_state)
    _truncate(d / "state.pt")
    with pytest.raises(CheckpointError) as err:
        load_state(d)
    msg = str(err.value)
    assert str(d / "state.pt") in msg and "\n" not in msg


def test_pickled_code_in_checkpoint_never_runs(tmp_path):
    marker = tmp_path / "PWNED"
    _evil_state(tmp_path / "ck" / "state.pt", marker)
    with pytest.raises(CheckpointError) as err:
        load_state(tmp_path / "ck")
    msg = str(err.value)
    assert not marker.exists(), "unpickling ran the embedded command"
    assert str(tmp_path / "ck" / "state.pt") in msg and "refused" in msg
    # One line, so callers that show the last line still name the file; never advise weights_only=False.
    assert "\n" not in msg and "weights_only=False" not in msg


def test_restore_falls_back_to_the_previous_good_checkpoint(tmp_path, tiny_state):
    import ray.train

    from ganray.state import build_state
    from ganray.train_loop import _restore

    cfg, st = tiny_state
    good = _save(tmp_path / "checkpoint_00000004", cfg, st)
    bad = tmp_path / "checkpoint_00000008"
    _evil_state(bad / "state.pt", tmp_path / "PWNED")
    fresh = build_state(cfg, None, torch.device("cpu"))
    with pytest.warns(UserWarning, match="checkpoint_00000008/state.pt"):
        _restore(fresh, ray.train.Checkpoint.from_directory(str(bad)), [str(bad), str(good)])
    assert fresh.step == 4 and not (tmp_path / "PWNED").exists()
    _assert_same_params(fresh.state_dict(), st.state_dict(), atol=0)


def test_restore_without_a_readable_checkpoint_fails_naming_each_file(tmp_path, tiny_state):
    from ganray.state import build_state
    from ganray.train_loop import _restore

    cfg, st = tiny_state
    a = _save(tmp_path / "checkpoint_00000004", cfg, st)
    _truncate(a / "state.pt")
    b = tmp_path / "checkpoint_00000008"
    b.mkdir()
    fresh = build_state(cfg, None, torch.device("cpu"))
    with pytest.warns(UserWarning), pytest.raises(CheckpointError) as err:
        _restore(fresh, None, [str(b), str(a)])
    assert str(a / "state.pt") in str(err.value) and str(b / "state.pt") in str(err.value)
    assert fresh.step == 0


# --------------------------------------------------------------------------------------------
# Full or read-only disk at checkpoint time: atomic writes keep the previous file.


def test_failed_atomic_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "state.pt"
    target.write_bytes(b"previous")

    def half_then_full(f):
        f.write(b"new, partly written")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as err:
        ckpt_io._atomic_write_bytes(target, half_then_full)
    assert err.value.errno == errno.ENOSPC and "state.pt" in str(err.value)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"], "temp file left behind"


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs, holding one debug checkpoint; skipped where mount is not allowed."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path: Path) -> None:
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC


def _remount(mnt: Path, opts: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{opts}", str(mnt)], check=True)


def test_checkpoint_on_a_full_disk_keeps_the_previous_one(tiny_disk, tiny_state):
    cfg, st = tiny_state
    d = _save(tiny_disk / "checkpoint_00000004", cfg, st)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    st8 = ckpt_io.load_state(d)
    st8["step"] = 8
    _fill(tiny_disk / "filler")
    with pytest.raises(OSError) as err:
        ckpt_io.save(d, st8, cfg, st.sampler().state_dict())
    assert err.value.errno == errno.ENOSPC and str(d) in str(err.value)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before, "previous checkpoint changed or temp left"
    assert load_state(d)["step"] == 4


def test_checkpoint_on_a_read_only_disk_keeps_the_previous_one(tiny_disk, tiny_state):
    cfg, st = tiny_state
    d = _save(tiny_disk / "checkpoint_00000004", cfg, st)
    _remount(tiny_disk, "ro")
    with pytest.raises(OSError) as err:
        _save(d, cfg, st)
    assert err.value.errno == errno.EROFS and str(d) in str(err.value)
    assert load_state(d)["step"] == 4


def test_metrics_on_a_full_disk_keep_the_previous_file(tiny_disk):
    run = RunFolder(str(tiny_disk / "run"))
    run.append_metrics({"step": 2, "kimg": 0.032, "loss_d": 1.0})
    before = (tiny_disk / "run" / "metrics.csv").read_bytes()
    _fill(tiny_disk / "filler")
    with pytest.raises(OSError) as err:
        run.append_metrics({"step": 4, "kimg": 0.064, "loss_d": 0.5, "note": "x" * 20_000})
    assert err.value.errno == errno.ENOSPC and "metrics.csv" in str(err.value)
    assert (tiny_disk / "run" / "metrics.csv").read_bytes() == before
    assert sorted(p.name for p in (tiny_disk / "run").iterdir()) == ["metrics.csv"], "temp file left behind"
