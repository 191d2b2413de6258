"""Shared pieces of the benchmarks: the machine, result rows, ganray runs in a subprocess.

Every ganray measurement runs `python -m ganray.cli train ...` in a fresh process, so it pays
exactly what a user pays (interpreter, imports, a local Ray start) and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO.parent / "shared" / "data" / "mnist"
T = TypeVar("T")


def default_source() -> str:
    """The MNIST test set when it is here (10,000 images), else scikit-learn's bundled digits."""
    return str(MNIST) if (MNIST / "t10k-images-idx3-ubyte.gz").exists() else "digits"


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict:
    """CPU model, cores, RAM, GPU and library versions: the context every number needs."""
    import ray
    import torch

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
        with open("/proc/meminfo") as f:
            mem_gib = int(next(ln for ln in f if ln.startswith("MemTotal")).split()[1]) / 2**20
    except (OSError, StopIteration):
        mem_gib = float("nan")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(mem_gib, 1), "gpu": gpu,
            "torch": torch.__version__, "ray": ray.__version__, "python": platform.python_version()}


@dataclass
class Row:
    """One line of the results table."""

    benchmark: str
    measurement: str
    value: float | None
    unit: str = ""
    target: str = ""
    ok: bool | None = None  # None: no target, or not measured
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def ratio(num: float | None, den: float | None) -> float | None:
    """num / den, or None where either is missing (or den is 0)."""
    return num / den if num and den else None


def ratio_row(benchmark: str, measurement: str, num: float | None, den: float | None, *, at_least: float,
              note: str = "") -> Row:
    value = ratio(num, den)
    return Row(benchmark, measurement, value, "x", f">= {at_least:g}", None if value is None else value >= at_least,
               note)


def median_ratio(nums: list[float | None], dens: list[float | None]) -> tuple[float | None, list[float | None]]:
    """Each pair's ratio and their median (None where a pair's numbers are missing): pairs run
    side by side, so the machine's slow drift divides out of each ratio, and the median keeps
    one disturbed pair from deciding the result."""
    ratios = [ratio(n, d) for n, d in zip(nums, dens, strict=True)]
    found = [r for r in ratios if r is not None]
    return (statistics.median(found) if found else None), ratios


def alternating(rounds: int, *arms: Callable[[int], T]) -> list[tuple[T, ...]]:
    """Run each arm(i) for i in range(rounds): in the given order, then reversed, and so on
    (ABBA... for two arms, ABCCBA... for three): a linear drift in the machine's speed favours
    none of them. One tuple of results per round, in the arms' order."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    if len(arms) < 2:
        raise ValueError(f"alternating needs at least 2 arms, got {len(arms)}")
    results = []
    for i in range(rounds):
        order = range(len(arms)) if i % 2 == 0 else reversed(range(len(arms)))
        got = {k: arms[k](i) for k in order}
        results.append(tuple(got[k] for k in range(len(arms))))
    return results


def print_table(rows: list[Row]) -> None:
    head = f"{'benchmark':10} {'measurement':52} {'value':>10} {'unit':6} {'target':10} {'ok':4}"
    print(head)
    print("-" * len(head))
    for r in rows:
        value = "-" if r.value is None else (f"{r.value:.3f}" if abs(r.value) < 10 else f"{r.value:,.1f}")
        ok = "" if r.ok is None else ("yes" if r.ok else "NO")
        print(f"{r.benchmark:10} {r.measurement[:52]:52} {value:>10} {r.unit:6} {r.target:10} {ok:4}"
              + (f"  {r.note}" if r.note else ""))


# --- ganray runs ---


@dataclass
class GanrayRun:
    run_dir: Path
    rows: list[dict]  # metrics.csv, numbers parsed
    summary: dict
    popen_time: float  # time.time() just before the process started
    seconds: float  # wall clock of the whole command


def run_ganray(out: Path, name: str, overrides: list[str], *, preset: str = "mnist", extra: list[str] = (),
               timeout: float = 3600) -> GanrayRun:
    """`ganray train` in a subprocess; raises with the command's stderr when it fails."""
    cmd = [sys.executable, "-m", "ganray.cli", "train", "--preset", preset, "--out", str(out), "--name", name,
           "--quiet", *extra]
    for o in overrides:
        cmd += ["--set", o]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)
    seconds = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"ganray train {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    run_dir = out / name
    return GanrayRun(run_dir, read_metrics(run_dir / "metrics.csv"),
                     json.loads((run_dir / "summary.json").read_text()), t0, seconds)


def trial_startups(runs: Path) -> list[dict]:
    """Each Tune trial's start-up from the timing.json in its run folder under `runs`, in start
    order: {trial, breakdown (ganray.startup.startup_breakdown: from the trial function's entry),
    first_step, ended (its metrics.csv's last write), metrics (that path)}."""
    from ganray.startup import startup_breakdown

    trials = []
    for timing in runs.glob("*/timing.json"):
        marks = json.loads(timing.read_text())
        metrics = timing.parent / "metrics.csv"
        trials.append({"trial": timing.parent.name, "breakdown": startup_breakdown(marks),
                       "first_step": marks["first_step"], "ended": metrics.stat().st_mtime, "metrics": metrics})
    return sorted(trials, key=lambda t: t["first_step"])


def tune_created(exp_dir: Path) -> dict[str, float]:
    """When Tune created each trial (epoch seconds, keyed by the run folder name ganray gives
    it, e.g. "fa557_00000"), from the timestamp in Tune's own trial directory name
    ("trial_driver_fa557_00000_0_..._2026-11-27_11-30-42", local time). The stamp is truncated
    to the second, so half a second is added to centre it."""
    created = {}
    for d in exp_dir.glob("trial_driver_*"):
        m = re.match(r"trial_driver_(\w+?_\d+)_\d+_.*_(\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d)$", d.name)
        if m:
            created[m.group(1)] = time.mktime(time.strptime(m.group(2), "%Y-%m-%d_%H-%M-%S")) + 0.5
    return created


def turnovers(trials: list[dict]) -> list[float]:
    """Sequential trials: one trial's last metrics row -> the next trial's first step (Tune's own
    scheduling and the previous trial's shutdown included)."""
    return [b["first_step"] - a["ended"] for a, b in itertools.pairwise(trials)]


def read_metrics(path: Path) -> list[dict]:
    def num(v: str):
        try:
            return float(v)
        except ValueError:
            return v

    with open(path) as f:
        return [{k: num(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def steady(rows: list[dict], batch_images_per_step: int) -> dict:
    """Steady state of a metrics.csv: rows after the first report (warm-up), images-weighted.

    A row's window holds (step - previous step) steps; its img_per_s and data_wait_frac are over
    that window's training time (report work excluded), so total images / total seconds is the
    harmonic mean weighted by images.
    """
    windows = []
    prev = 0
    for r in rows:
        steps = int(r["step"]) - prev
        prev = int(r["step"])
        images = steps * batch_images_per_step
        windows.append((images, images / r["img_per_s"] if r.get("img_per_s") else 0.0, r.get("data_wait_frac", 0.0)))
    use = windows[1:] or windows
    seconds = sum(s for _, s, _ in use)
    return {
        "img_per_s": sum(n for n, _, _ in use) / seconds if seconds else None,
        "data_wait_frac": sum(s * w for _, s, w in use) / seconds if seconds else None,
        "windows": len(use),
        # Other processes only ever slow a window down: on a busy machine the fastest one
        # is the better estimate of the undisturbed speed.
        "best_img_per_s": max((n / s for n, s, _ in use if s), default=None),
    }


def run_plain(overrides: list[str], *, steps: int, report_every: int, threads: int, out: Path,
              name: str, preset: str = "mnist", workers: int = 1, cores: list[int] | None = None) -> dict:
    """benchmarks/plain_loop.py in a subprocess (a fresh process, like the ganray run); with
    workers > 1, plain DDP in that many processes; with `cores`, pinned to them."""
    path = out / f"{name}.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "plain_loop.py"), "--preset", preset, "--steps", str(steps),
           "--report-every", str(report_every), "--threads", str(threads), "--workers", str(workers),
           "--json", str(path)]
    for o in overrides:
        cmd += ["--set", o]
    pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, preexec_fn=pin)
    if proc.returncode != 0:
        raise RuntimeError(f"plain loop {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(path.read_text())


def ganray_cores(threads: int) -> list[int] | None:
    """The cores `ganray train` pins its one worker to on a local instance it starts
    (`train.cpu_affinity=auto`, nothing else claimed), or None where it pins nothing."""
    from ganray import affinity

    allowed = affinity.pinnable_cores()
    return None if allowed is None else affinity.choose_cores(allowed, [], "benchmark", threads, 1)


@contextlib.contextmanager
def idle_ray(threads: int, out: Path, name: str, *, timeout: float = 300) -> Iterator[subprocess.Popen]:
    """benchmarks/ray_idle.py for the block: the Ray runtime of a one-worker ganray run, idle.
    Yields its driver's process once its worker runs; its log is out/NAME.log."""
    ready, stop = out / f"{name}.ready", out / f"{name}.stop"
    for f in (ready, stop):
        f.unlink(missing_ok=True)
    with open(out / f"{name}.log", "w") as log:
        proc = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "ray_idle.py"), "--ready", str(ready),
                                 "--stop", str(stop), "--threads", str(threads)], stdout=log,
                                stderr=subprocess.STDOUT, cwd=REPO)
        try:
            deadline = time.monotonic() + timeout
            while not ready.exists():
                if proc.poll() is not None:
                    raise RuntimeError(f"ray_idle.py exited with {proc.returncode} before its worker ran; see {log.name}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ray_idle.py's worker did not start within {timeout:.0f} s; see {log.name}")
                time.sleep(0.2)
            yield proc
        finally:
            stop.touch()
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait(timeout=60)
