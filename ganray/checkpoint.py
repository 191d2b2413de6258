"""The on-disk checkpoint format: save, load, find. Knows folders, not Ray.

A checkpoint is a directory:
    state.pt               torch.save of tensors, numbers and plain containers only, so it
                           loads with weights_only=True (no pickled code ever executes)
    generator.safetensors  the sampling generator (EMA weights when EMA is on) for export
    config.yaml            the resolved config
    meta.json              {"step", "kimg", "fid"} for humans and tools
Files are written to a temporary name and renamed, so a crash never leaves a half-written file
under the final name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from ganray.config import Config, from_dict

STATE_FILE = "state.pt"
GENERATOR_FILE = "generator.safetensors"
_CKPT_RE = re.compile(r"^checkpoint_(\d+)$")
_STAGING_PREFIX = "ganray-ckpt-"
_STAGING_RE = re.compile(rf"^{_STAGING_PREFIX}(\d+)-[^/]+$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt or unsafe; the message names the file."""


def _atomic_write_bytes(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with _suppress():
            os.unlink(tmp)
        if isinstance(e, OSError) and not e.filename:
            # write() errors carry no file name; a full or read-only disk must say which file.
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


def save(directory: str | Path, state: dict[str, Any], cfg: Config, sample_state_dict: dict) -> Path:
    """Write a checkpoint into `directory` (created). `state` must be weights_only-safe."""
    from safetensors.torch import save as safetensors_bytes

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(d / STATE_FILE, lambda f: torch.save(state, f))
    tensors = {k: v.detach().cpu().contiguous() for k, v in sample_state_dict.items()}
    blob = safetensors_bytes(tensors, metadata={"format": "ganray-generator-v1"})
    _atomic_write_bytes(d / GENERATOR_FILE, lambda f: f.write(blob))
    _atomic_write_bytes(d / "config.yaml", lambda f: f.write(cfg.to_yaml().encode()))
    meta = {"step": state.get("step"), "kimg": state.get("images_seen", 0) / 1000, "fid": state.get("fid"),
            "num_classes": state.get("num_classes")}
    _atomic_write_bytes(d / "meta.json", lambda f: f.write(json.dumps(meta).encode()))
    return d


def staging_dir() -> tempfile.TemporaryDirectory:
    """A local temporary folder to write a checkpoint into before Ray copies it to the run folder.

    Its name carries this process's id. A worker that Ray stops while it reports (a failed group
    is killed, with no chance to clean up) leaves its folder behind: a whole checkpoint on the
    node's disk per failure. Each call first removes such folders of dead processes
    (`remove_orphaned_staging`: one listing of the temporary directory per checkpoint), so the
    restarted workers of a long run clean up after the ones before them.
    """
    remove_orphaned_staging()
    return tempfile.TemporaryDirectory(prefix=f"{_STAGING_PREFIX}{os.getpid()}-")


def remove_orphaned_staging(root: str | Path | None = None, min_age_s: float = 600.0) -> list[str]:
    """Remove `staging_dir` folders in `root` (the temporary directory) whose process is gone.

    Only folders this user owns, untouched for `min_age_s` (a process id from another PID
    namespace sharing the folder, as with containers, can look dead here while it uploads).
    Returns the removed paths; anything that cannot be read or removed is left alone.
    """
    root = Path(root or tempfile.gettempdir())
    removed = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        m = _STAGING_RE.match(entry.name)
        pid = int(m.group(1)) if m else None
        if pid is None or pid == os.getpid() or _alive(pid):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not entry.is_dir(follow_symlinks=False) or st.st_uid != os.getuid() or time.time() - st.st_mtime < min_age_s:
                continue
            shutil.rmtree(entry.path)
        except OSError:
            continue
        removed.append(entry.path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's live process
        return True
    return True


def load_state(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle opcode, or an unsafe global
        raise CheckpointError(f"cannot load checkpoint {path}: {_reason(e)}") from None


def _reason(err: Exception) -> str:
    """One line: torch's weights_only refusal spans several lines (the file name would be lost
    to callers that show the last line) and advises turning weights-only loading off, which we never do."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    unsafe = [line for line in lines if "GLOBAL" in line]
    if unsafe:
        return f"refused to unpickle code (weights_only=True): {unsafe[0]}"
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def load_config(directory: str | Path) -> Config:
    path = Path(directory) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"checkpoint config {path} is missing")
    return from_dict(yaml.safe_load(path.read_text()))


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint folders of a run, oldest first (by step in the folder name)."""
    run = Path(run_dir)
    if not run.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run.iterdir() if p.is_dir() and (m := _CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def best_checkpoint(run_dir: str | Path) -> Path | None:
    """Lowest FID among a run's checkpoints, else the latest."""
    ckpts = list_checkpoints(run_dir)
    scored = []
    for p in ckpts:
        try:
            fid = json.loads((p / "meta.json").read_text()).get("fid")
        except (OSError, ValueError):
            continue
        if fid is not None:
            scored.append((fid, p))
    if scored:
        return min(scored)[1]
    return ckpts[-1] if ckpts else None


def resolve(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint folder or a run folder (best, else latest)."""
    p = Path(path)
    if (p / STATE_FILE).is_file() or (p / GENERATOR_FILE).is_file():
        return p
    if p.is_dir():
        best = best_checkpoint(p)
        if best is not None:
            return best
        raise CheckpointError(f"{p} holds no checkpoint (no checkpoint_* folders)")
    raise CheckpointError(f"checkpoint path {p} does not exist")


def load_generator(path: str | Path, device: str | torch.device = "cpu"):
    """(G in eval mode with the sampling weights, Config) from a checkpoint or run folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ganray.models import build_generator

    d = resolve(path)
    cfg = load_config(d)
    meta_classes = None
    meta_path = d / "meta.json"
    if meta_path.is_file():
        meta_classes = json.loads(meta_path.read_text()).get("num_classes")
    num_classes = cfg.data.num_classes or meta_classes
    G = build_generator(cfg.model, cfg.data, num_classes if cfg.model.conditional else None)
    try:
        G.load_state_dict(load_file(str(d / GENERATOR_FILE)))
    except (OSError, SafetensorError, RuntimeError) as e:
        raise CheckpointError(f"cannot load generator weights {d / GENERATOR_FILE}: {e}") from None
    return G.to(device).eval(), cfg
