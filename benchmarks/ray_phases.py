"""What Ray Train's idle runtime costs a plain loop on this machine, measured within one run.

    python benchmarks/ray_phases.py --json OUT [--threads N] [--steps S] [--phase-s 6]
                                    [--preset dcgan] [--set SECTION.KEY=VALUE ...]

Sequential runs (run.py's overhead rounds: the plain loop alone, then beside Ray) differ by
this VM's drift from one minute to the next, +-5-10% a pair, more than the effect. Here one
plain loop (benchmarks/plain_loop.py, in this process, pinned as ganray's worker would be) runs
throughout beside benchmarks/ray_idle.py's idle one-worker Ray Train job, and the job's
processes are stopped (SIGSTOP) and resumed in phases of a few seconds, cycling ABCCBA:

    A  every process of the job stopped: the loop as if alone
    B  every process running: the loop beside Ray Train's runtime for one worker
    C  ray_idle.HELPERS stopped (monitors, API server, agents), the rest running: beside the
       least any Ray Train job keeps (GCS, raylet, controller, synchronisation actor,
       autoscaling coordinator, driver, the worker's Ray threads)

A phase's img/s is that of the loop's windows (a few steps each) inside it, after a settling
margin; B/A and C/A are taken per cycle, from phases seconds apart, and their medians are
the result (the first cycle, the loop's warm-up, left out). The CPU time of the job's
processes is read at each phase boundary, so that the JSON shows Ray's load per phase (0 in A).
An experiment on Ray, not a way to run it: a stopped process answers nothing. On SIGTERM the
job is resumed and ended; after a SIGKILL of this process it may be left stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from ray_idle import HELPERS, helpers

from ganray import procs

CYCLE = "ABCCBA"


def send(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


class Phases:
    """Switches the job's processes between the states of CYCLE every `phase_s` seconds on a
    thread, and keeps the timeline: (start, end, state, CPU seconds of the job's processes)."""

    def __init__(self, everything: list[int], helper_pids: list[int], phase_s: float):
        self.everything, self.phase_s = everything, phase_s
        self.running = {"A": [], "B": everything, "C": [p for p in everything if p not in set(helper_pids)]}
        self.timeline: list[tuple[float, float, str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _enter(self, state: str) -> None:
        running = self.running[state]
        send(running, signal.SIGCONT)
        send(sorted(set(self.everything) - set(running)), signal.SIGSTOP)

    def _run(self) -> None:
        k = 0
        while not self._stop.is_set():
            state = CYCLE[k % len(CYCLE)]
            self._enter(state)
            t0, cpu0 = time.perf_counter(), procs.cpu_seconds(self.everything)
            self._stop.wait(self.phase_s)
            self.timeline.append((t0, time.perf_counter(), state, procs.cpu_seconds(self.everything) - cpu0))
            k += 1

    def __enter__(self) -> Phases:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        send(self.everything, signal.SIGCONT)  # the job ends as it would have


def phase_rates(windows: list[tuple[float, int, float]], timeline: list[tuple[float, float, str, float]],
                settle_s: float) -> list[tuple[str, float | None]]:
    """(state, img/s) per phase, from the windows that start `settle_s` or more after the phase
    starts and end before it ends; None where no window fits."""
    out = []
    for t0, t1, state, _ in timeline:
        inside = [(n, s) for end, n, s in windows if end - s >= t0 + settle_s and end <= t1]
        seconds = sum(s for _, s in inside)
        out.append((state, sum(n for n, _ in inside) / seconds if seconds > 0 else None))
    return out


def cycle_ratios(rates: list[tuple[str, float | None]], skip: int = 1) -> dict[str, list[float]]:
    """B/A and C/A per whole cycle of CYCLE (the mean img/s of each state's phases in it), the
    first `skip` cycles left out (the loop's warm-up: allocator, oneDNN's primitive caches)."""
    ratios: dict[str, list[float]] = {"B/A": [], "C/A": []}
    n = len(CYCLE)
    for i in range(skip * n, len(rates) - n + 1, n):
        by: dict[str, list[float]] = {}
        for state, rate in rates[i:i + n]:
            if rate is not None:
                by.setdefault(state, []).append(rate)
        if "A" not in by:
            continue
        a = statistics.fmean(by["A"])
        for state in ("B", "C"):
            if state in by:
                ratios[f"{state}/A"].append(statistics.fmean(by[state]) / a)
    return ratios


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", type=Path, required=True, help="results; the idle job's log goes next to it")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--steps", type=int, default=2400, help="the plain loop's steps (the run's length)")
    p.add_argument("--report-every", type=int, default=2, help="steps per window of the plain loop")
    p.add_argument("--phase-s", type=float, default=6.0, help="seconds per phase")
    p.add_argument("--settle-s", type=float, default=1.0, help="seconds left out at the start of each phase")
    p.add_argument("--preset", default="dcgan")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # so that the job is resumed and ended on `kill` too

    import torch
    from common import ganray_cores, idle_ray
    from plain_loop import load_images, plain_loop

    from ganray.config import load_config

    cfg = load_config(None, args.overrides, preset=args.preset)
    cores = ganray_cores(args.threads)
    torch.set_num_threads(args.threads)
    images = load_images(cfg, torch.device("cpu"))
    name = f"{args.json.stem}_ray_idle"  # its files (log, ready, stop) go next to the JSON
    with idle_ray(args.threads, args.json.parent, name) as job:
        if cores:  # only now: the job's processes must not inherit the pin
            os.sched_setaffinity(0, cores)
        everything = sorted(pid for pid, _ in procs.tree({(job.pid, procs.start_time(job.pid) or 0)}))
        found = helpers(everything)
        missing = [m for m in HELPERS if m not in found]
        if missing:
            raise RuntimeError(f"no process of the idle job matches {missing}: has Ray renamed them?")
        with Phases(everything, [pid for pids in found.values() for pid in pids], args.phase_s) as phases:
            out = plain_loop(cfg, steps=args.steps, report_every=args.report_every, threads=args.threads,
                             images=images)
    clean = job.returncode == 0
    rates = phase_rates(out["windows"], phases.timeline, args.settle_s)
    ratios = cycle_ratios(rates)
    cpu = {s: [c / (t1 - t0) for t0, t1, st, c in phases.timeline if st == s] for s in "ABC"}
    result = {
        "threads": args.threads, "cores": cores, "steps": args.steps, "phase_s": args.phase_s,
        "settle_s": args.settle_s, "processes": len(everything), "helpers": found,
        "plain_img_per_s": out["img_per_s"], "phase_img_per_s": rates, "ratios": ratios,
        "median": {k: statistics.median(v) if v else None for k, v in ratios.items()},
        "phase_job_cpu_cores": [(st, c / (t1 - t0)) for t0, t1, st, c in phases.timeline],
        "job_cpu_cores": {s: statistics.median(v) if v else None for s, v in cpu.items()},
        "job_ended_cleanly": clean, "job_log": str(args.json.parent / f"{name}.log"),
    }
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    m, c = result["median"], result["job_cpu_cores"]

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    print(f"B/A (beside Ray / alone) {fmt(m['B/A'])}, C/A (beside Ray Train's least / alone) {fmt(m['C/A'])}, "
          f"medians of {len(ratios['B/A'])} cycles; the job's CPU per phase A {fmt(c['A'])}, B {fmt(c['B'])}, "
          f"C {fmt(c['C'])} cores; job ended {'cleanly' if clean else 'with code ' + str(job.returncode)}")
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
