"""Time to quality: judge FID of the default preset after 1, 3, 6 and 10 minutes of training.

    python benchmarks/time_to_quality.py [--minutes 10] [--at 1,3,6,10] [--workers 2] [--json ttq.json]

One run of `ganray train --data MNIST --workers 2 --max-minutes M` that keeps a checkpoint every
few kimg; afterwards the checkpoint last written before each time mark (training time, from
metrics.csv) is sampled 10,000 times and scored by the reference judge. With the preset's
constant learning rate the run's state at 6 minutes is the state a 6-minute run ends in.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import load_avg, machine  # noqa: E402
from quality import SHARED, judge_checkpoint  # noqa: E402

from ganray.checkpoint import list_checkpoints  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--at", default="1,3,6,10", help="minutes of training at which to judge")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--checkpoint-every-kimg", type=float, default=8.0)
    ap.add_argument("--out", default="/tmp/ganray-ttq")
    ap.add_argument("--set", dest="extra", action="append", default=[], help="override on top of the preset")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--run-dir", help="judge this finished run instead of training a new one")
    args = ap.parse_args(argv)
    marks = [float(m) for m in args.at.split(",")]
    out = Path(args.out)
    name = f"ttq-{int(time.time())}"
    cmd = [sys.executable, "-m", "ganray.cli", "train", "--data", str(SHARED / "data" / "mnist"),
           "--workers", str(args.workers), "--max-minutes", str(args.minutes), "--kimg", "100000",
           "--out", str(out), "--name", name, "--quiet",
           "--set", f"train.checkpoint_every_kimg={args.checkpoint_every_kimg}", "--set", "train.keep_checkpoints=1000"]
    for o in args.extra:
        cmd += ["--set", o]
    load_before = load_avg()
    if args.run_dir:
        run_dir = Path(args.run_dir)
    else:
        subprocess.run(cmd, check=True)
        run_dir = out / name
    with open(run_dir / "metrics.csv") as f:
        reports = sorted((int(r["step"]), float(r["wall_s"])) for r in csv.DictReader(f))

    def train_s(step: int) -> float:  # training time at the last report at or after `step`
        return next((w for s, w in reports if s >= step), reports[-1][1])

    ckpts = [(int(p.name.split("_")[1]), p) for p in list_checkpoints(run_dir)]
    rows = []
    for m in marks:
        # the last checkpoint whose step was reached by m minutes of training
        done = [(s, p) for s, p in ckpts if train_s(s) <= m * 60 + 1.0]
        if not done:
            continue
        step, path = done[-1]
        verdict = judge_checkpoint(str(path), run_dir / f"judge_{step}.npz")
        meta = json.loads((path / "meta.json").read_text())
        rows.append({"minutes": m, "train_s": train_s(step), "step": step, "kimg": meta.get("kimg"),
                     "judge_fid": verdict["fid"], "modes": verdict["modes"], "judge_is": verdict["is"],
                     "ganray_fid": meta.get("fid")})
        print(f"{m:>5g} min  step {step:>6}  kimg {meta.get('kimg', 0):7.1f}  judge FID {verdict['fid']:8.2f}  "
              f"modes {verdict['modes']:>2}  IS {verdict['is']:.2f}", flush=True)
    report = {"machine": machine(), "load_before": load_before, "load_after": load_avg(), "run_dir": str(run_dir),
              "overrides": args.extra, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
