"""Soak test: `ganray train` while a training worker is SIGKILLed from outside every N seconds.

    python benchmarks/soak.py [--minutes 10] [--kill-every 30] [--json soak.json]

The driver runs as a subprocess with its own local Ray (temp dir under /tmp, a tag in its
environment to find its processes), tiny debug models on `digits`, train.max_failures=1000
and an endless step count. Every --kill-every seconds, once the previous restart has reported
again, one `ray::RayTrainWorker` process of that Ray is SIGKILLed. After --minutes the driver is
stopped (SIGINT) and the run is finished with `--resume --steps <newest checkpoint + 2 intervals>`.

Measured, per kill: the last reported step before it, the newest readable checkpoint at that
moment, and the step the restarted worker resumed from (its first new report, told by the sample
grid files written after the kill, minus one report interval). Steps lost = last reported step - resumed step, which must not exceed the checkpoint
interval; metric rows lost (missing or duplicated report steps in metrics.csv) must be 0.
Exit status 1 when either bound is broken.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ganray.checkpoint import CheckpointError, list_checkpoints, load_state  # noqa: E402

TAG_ENV = "GANRAY_SOAK_TAG"
IMAGES_PER_STEP = 16  # the debug preset: batch 16, one worker, one D step


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="how long to keep killing workers")
    p.add_argument("--kill-every", type=float, default=30.0, help="seconds between worker kills")
    p.add_argument("--checkpoint-every", type=int, default=8, help="checkpoint interval in steps")
    p.add_argument("--report-every", type=int, default=2, help="report interval in steps (divides the above)")
    p.add_argument("--out", help="storage root for the run (default: a temp folder, removed unless --keep)")
    p.add_argument("--keep", action="store_true", help="keep the run folder")
    p.add_argument("--seed", type=int, default=0, help="which worker process to pick, when several")
    p.add_argument("--json", help="write the results here")
    return p.parse_args(argv)


# --- the driver's processes and the run folder ---


def tagged(tag: str) -> dict[int, str]:
    """pid -> command line of each process whose environment holds TAG_ENV=tag."""
    want = f"{TAG_ENV}={tag}".encode()
    found = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if want in (d / "environ").read_bytes().split(b"\0"):
                    found[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
    return found


def train_workers(tag: str) -> list[int]:
    return sorted(pid for pid, cmd in tagged(tag).items() if cmd.startswith("ray::RayTrainWorker"))


def kill_all(tag: str, wait_s: float = 30.0) -> int:
    """Wait for the tagged processes to exit on their own, then SIGKILL what is left; return that count."""
    deadline = time.time() + wait_s
    while tagged(tag) and time.time() < deadline:
        time.sleep(0.5)
    left = tagged(tag)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(left)


def report_steps(run: Path) -> list[int]:
    try:
        with open(run / "metrics.csv") as f:
            return [int(float(r["step"])) for r in csv.DictReader(f)]
    except (OSError, ValueError, KeyError):  # not written yet, or replaced mid-read
        return []


def newest_checkpoint(run: Path) -> int:
    for d in reversed(list_checkpoints(run)):
        try:
            return int(load_state(d)["step"])
        except CheckpointError:
            continue
    return 0


# --- the soak ---


def train_command(out: Path, args, steps: int) -> list[str]:
    kimg = lambda n: f"{n * IMAGES_PER_STEP / 1000:g}"  # noqa: E731
    return [shutil.which("ganray") or "ganray", "train", "--preset", "debug", "--quiet", "--data", "digits",
            "--out", str(out), "--name", "soak", "--steps", str(steps), "--seed", str(args.seed),
            "--set", "eval.features=none", "--set", "train.max_failures=1000",
            "--set", f"train.report_every_kimg={kimg(args.report_every)}",
            "--set", f"train.checkpoint_every_kimg={kimg(args.checkpoint_every)}"]


def rank0_pid(run: Path) -> int | None:
    """The pid rank 0 wrote into workers.json when it (re)started."""
    try:
        return json.loads((run / "workers.json").read_text()).get("pid")
    except (OSError, ValueError):
        return None


def first_report_after(run: Path, t: float) -> int:
    """The lowest step whose sample grid was written after time t: the restarted worker's first
    report (several may land between two polls, so the newest metrics row would overstate it)."""
    steps = [int(g.stem.split("_")[1]) for g in (run / "samples").glob("grid_*.png") if g.stat().st_mtime > t]
    return min(steps)


def kill_loop(run: Path, tag: str, driver: subprocess.Popen, args) -> list[dict]:
    """Kill a worker every --kill-every s until --minutes pass; return one record per kill.

    A restart is seen when workers.json names a new rank-0 pid; its first report after that
    (metrics.csv trimmed to the restored checkpoint, plus one row) gives the resumed step.
    """
    rng = random.Random(args.seed)
    kills: list[dict] = []
    t_end = time.time() + args.minutes * 60
    next_kill = time.time() + args.kill_every
    seen = report_steps(run)
    while time.time() < t_end or (kills and "resumed_from" not in kills[-1]):
        if driver.poll() is not None:
            raise RuntimeError(f"the driver exited with status {driver.returncode} during the soak")
        k = kills[-1] if kills else None
        if k is not None and "resumed_from" not in k:
            if time.time() - k["t"] > 600:
                raise RuntimeError(f"no report within 600 s of kill {len(kills)}")
            k.setdefault("new_pid", None)
            if k["new_pid"] is None and rank0_pid(run) not in (None, k["rank0_pid"]):
                k["new_pid"] = rank0_pid(run)
        steps = report_steps(run)
        if steps != seen and k is not None and k.get("new_pid") and "resumed_from" not in k:
            k.update(resumed_from=first_report_after(run, k["t"]) - args.report_every,
                     restart_s=round(time.time() - k["t"], 1))
            k["steps_lost"] = k["last_report"] - k["resumed_from"]
            print(f"  restart {len(kills)}: resumed from step {k['resumed_from']} after {k['restart_s']} s; "
                  f"lost {k['steps_lost']} steps", flush=True)
        seen = steps
        ready = steps and (k is None or "resumed_from" in k)
        if ready and time.time() >= next_kill and time.time() < t_end and (workers := train_workers(tag)):
            pid, pid0 = rng.choice(workers), rank0_pid(run)
            steps = report_steps(run)  # as late as possible: the worker dies with its last report
            os.kill(pid, signal.SIGKILL)
            kills.append({"t": time.time(), "pid": pid, "rank0_pid": pid0, "last_report": steps[-1],
                          "checkpoint": newest_checkpoint(run)})
            print(f"kill {len(kills)}: pid {pid} at reported step {steps[-1]}, newest checkpoint "
                  f"{kills[-1]['checkpoint']}", flush=True)
            next_kill = time.time() + args.kill_every
            seen = steps
        time.sleep(0.25)
    return kills


def rows_check(steps: list[int], last: int, every: int) -> dict:
    expected = list(range(every, last + 1, every)) + ([last] if last % every else [])
    return {"expected": len(expected), "present": len(steps),
            "missing": sorted(set(expected) - set(steps)), "duplicated": len(steps) - len(set(steps)),
            "unexpected": sorted(set(steps) - set(expected))}


def soak(args) -> dict:
    root = Path(tempfile.mkdtemp(prefix="grs-", dir="/tmp"))  # short: Ray's socket paths stay < 108 chars
    out = Path(args.out) if args.out else root / "runs"
    run = out / "soak"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",) and not k.startswith("GANRAY_FAULT_")}
    env.update(RAY_TMPDIR=str(root), **{TAG_ENV: root.name})
    log = open(root / "driver.log", "wb")
    t0 = time.time()
    driver = subprocess.Popen(train_command(out, args, 10**9), env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        print(f"soak: {args.minutes:g} min, a worker killed every {args.kill_every:g} s; run {run}", flush=True)
        kills = kill_loop(run, root.name, driver, args)
        soak_s = time.time() - t0
        driver.send_signal(signal.SIGINT)
        try:
            driver.wait(60)
        except subprocess.TimeoutExpired:
            driver.kill()
        orphans = kill_all(root.name)
        final = newest_checkpoint(run) + 2 * args.checkpoint_every
        finish = subprocess.run([*train_command(out, args, final), "--resume"], env=env, capture_output=True,
                                text=True, timeout=900)
        orphans += kill_all(root.name)
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
        kill_all(root.name, wait_s=0)
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
    lost = [k.get("steps_lost") for k in kills]
    rows = rows_check(report_steps(run), final, args.report_every)
    result = {
        "minutes": args.minutes, "kill_every_s": args.kill_every, "soak_s": round(soak_s, 1),
        "checkpoint_every_steps": args.checkpoint_every, "report_every_steps": args.report_every,
        "kills": len(kills), "restarts": sum(1 for k in kills if "resumed_from" in k),
        "steps_lost": lost, "max_steps_lost": max((x for x in lost if x is not None), default=0),
        "mean_restart_s": round(sum(k.get("restart_s", 0) for k in kills) / max(len(kills), 1), 1),
        "steps_at_end_of_soak": max((k["last_report"] for k in kills), default=0),
        "final_steps_requested": final, "final_steps": summary.get("steps"), "final_status": summary.get("status"),
        "finish_exit": finish.returncode, "metric_rows": rows, "orphan_processes_killed": orphans,
        "kill_records": [{k: v for k, v in rec.items() if k not in ("t", "rank0_pid", "new_pid")} for rec in kills],
    }
    result["ok"] = bool(
        finish.returncode == 0 and summary.get("steps") == final and result["restarts"] == result["kills"]
        and result["max_steps_lost"] <= args.checkpoint_every and not rows["missing"] and not rows["duplicated"]
        and not rows["unexpected"]
    )
    if finish.returncode != 0:
        result["finish_error"] = (finish.stderr or finish.stdout)[-2000:]
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return result


def print_table(r: dict) -> None:
    rows = [
        ("soak duration", f"{r['soak_s']:.0f} s ({r['minutes']:g} min requested), a kill every {r['kill_every_s']:g} s"),
        ("worker kills / restarts", f"{r['kills']} / {r['restarts']} (mean restart {r['mean_restart_s']} s)"),
        ("steps lost per restart", f"{r['steps_lost']} (max {r['max_steps_lost']}, bound "
                                   f"{r['checkpoint_every_steps']} = checkpoint interval)"),
        ("metric rows", f"{r['metric_rows']['present']} of {r['metric_rows']['expected']}; missing "
                        f"{r['metric_rows']['missing']}, duplicated {r['metric_rows']['duplicated']}"),
        ("final run", f"{r['final_status']} at step {r['final_steps']} of {r['final_steps_requested']}"),
        ("orphan Ray processes killed", str(r["orphan_processes_killed"])),
        ("result", "PASS" if r["ok"] else "FAIL"),
    ]
    width = max(len(a) for a, _ in rows)
    for a, b in rows:
        print(f"{a:<{width}}  {b}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.checkpoint_every % args.report_every:
        sys.exit("soak: --report-every must divide --checkpoint-every")
    result = soak(args)
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
