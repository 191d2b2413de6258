"""ASHA + ganray's early stopping against running every trial to the end, on the same trials.

    python benchmarks/tune_asha.py [--trials 9] [--kimg 60] [--evals 6] [--grace-kimg G] [--searches full,asha]
                                   [--json tune_asha.json]

Both searches sample the same trial configs (the built-in DCGAN space, searcher seed fixed) on
top of the mnist preset with MNIST as data, one worker per trial, concurrency from the CPUs.
"full" is FIFO with the stopper's plateau and D-won rules switched off; "asha" is `ganray tune`'s
default (ASHA on fid over kimg, reduction factor 3, GANStopper defaults). Reported: compute as
the sum of trial kimg and of trial wall time, the best FID each search found, and whether ASHA
kept the trial that the full search ranks best. Every trial trains with the same seed, so a
config's curve is (nearly) the same in both searches; the difference is where trials stop.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import default_source, load_avg, machine, trial_startups, tune_created, turnovers  # noqa: E402


def search(kind: str, args, out: Path) -> dict:
    from ganray.config import mnist
    from ganray.tune import DEFAULT_SPACE, DEFAULT_STOPPING
    from ganray.tune_run import run_tune

    base = mnist()  # what `ganray tune` starts from
    base.data.source = args.data
    base.train.kimg = args.kimg
    base.eval.every_kimg = args.kimg / args.evals
    base.eval.fid_samples = args.fid_samples
    base.run.out = str(out)
    stopping = dict(DEFAULT_STOPPING)
    if kind == "full":  # every trial to the end (a NaN still ends a trial: it cannot go on)
        stopping.update(patience=10**9, d_gap=float("inf"))
    t0 = time.time()
    summary = run_tune(base, dict(DEFAULT_SPACE), stopping, name=f"{kind}-{int(t0)}", num_samples=args.trials,
                       scheduler="fifo" if kind == "full" else "asha", seed=args.seed, grace_kimg=args.grace_kimg,
                       verbose=0)
    table = summary.pop("table")
    keys = list(DEFAULT_SPACE)
    table["config"] = table[keys].astype(str).agg(" ".join, axis=1)
    return {"kind": kind, "wall_s": time.time() - t0, "best_fid": summary["best_fid"],
            "total_kimg": summary["total_kimg"], "total_trial_s": summary["total_trial_s"],
            "trials": table[["config", "best_fid", "kimg", "wall_s", "stop_reason"]].to_dict("records"),
            "exp_dir": summary["exp_dir"], "startup": startup(Path(summary["exp_dir"]) / "runs")}


def startup(runs: Path) -> dict:
    """Trial start-up (the trial function's entry -> its first training step): mean, range and
    phases over the trials, the same counted from Tune's creation of the trial, and the mean
    turnover between sequential trials."""
    trials = trial_startups(runs)
    if not trials:
        return {}
    created = tune_created(runs.parent)
    from_creation = [t["first_step"] - created[t["trial"]] for t in trials if t["trial"] in created]
    phases = {k: round(sum(t["breakdown"].get(k, 0.0) for t in trials) / len(trials), 2)
              for k in trials[0]["breakdown"]}
    turnover = turnovers(trials)
    return {"mean_s": phases.pop("total_s"), "phases": phases,
            "min_s": min(t["breakdown"]["total_s"] for t in trials),
            "max_s": max(t["breakdown"]["total_s"] for t in trials),
            "turnover_mean_s": sum(turnover) / len(turnover) if turnover else None,
            "from_creation_mean_s": sum(from_creation) / len(from_creation) if from_creation else None,
            "from_creation_range_s": [min(from_creation), max(from_creation)] if from_creation else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=9)
    ap.add_argument("--kimg", type=float, default=60.0, help="length of a trial run to the end (default: train.kimg)")
    ap.add_argument("--evals", type=int, default=6, help="FID evaluations in a full trial (ASHA's rungs)")
    ap.add_argument("--grace-kimg", type=float, help="ASHA's first rung (default: the first evaluation)")
    ap.add_argument("--fid-samples", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0, help="searcher seed (same trial configs in both searches)")
    ap.add_argument("--data", default=default_source())
    ap.add_argument("--out", default="/tmp/ganray-tune-bench")
    ap.add_argument("--searches", default="full,asha", help="which searches to run (full alone: trial start-up)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine(), "args": vars(args), "load_before": load_avg()}
    kinds = args.searches.split(",")
    if not kinds or set(kinds) - {"full", "asha"}:
        ap.error(f"--searches: a comma-separated subset of full,asha, not {args.searches!r}")
    results = {kind: search(kind, args, out) for kind in kinds}
    report["load_after"] = load_avg()
    report |= results
    if "full" in results:
        full = results["full"]
        st = full["startup"]
        if st:
            mean_trial = full["total_trial_s"] / len(full["trials"])
            report["startup_share"] = st["mean_s"] / mean_trial
            report["startup_share_from_creation"] = (st["from_creation_mean_s"] or 0) / mean_trial
            print(f"trial start-up (full search), from the trial function: {st['mean_s']:.1f} s mean "
                  f"({st['min_s']:.1f}-{st['max_s']:.1f}), {report['startup_share']:.1%} of a full trial "
                  f"({mean_trial:.0f} s; target <= 10%); from Tune's creation of the trial: "
                  f"{st['from_creation_mean_s'] or 0:.1f} s, {report['startup_share_from_creation']:.1%}; "
                  f"turnover between trials {st['turnover_mean_s'] or 0:.1f} s; phases {st['phases']}")
    if len(results) < 2:
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1, default=str))
        return 0
    full, asha = results["full"], results["asha"]
    best_cfg = min(full["trials"], key=lambda t: t["best_fid"] if t["best_fid"] == t["best_fid"] else 1e18)["config"]
    kept = next(t for t in asha["trials"] if t["config"] == best_cfg)
    report |= {
        "kimg_ratio": asha["total_kimg"] / full["total_kimg"],
        "trial_s_ratio": asha["total_trial_s"] / full["total_trial_s"],
        "wall_ratio": asha["wall_s"] / full["wall_s"],
        "best_fid_ratio": asha["best_fid"] / full["best_fid"],
        "full_best_config_in_asha": {"config": best_cfg, "kimg": kept["kimg"], "stop_reason": kept["stop_reason"]},
    }
    print(f"{'search':<6} {'trials':>6} {'sum kimg':>9} {'sum trial s':>11} {'wall s':>7} {'best FID':>9}")
    for r in (full, asha):
        print(f"{r['kind']:<6} {len(r['trials']):>6} {r['total_kimg']:>9.1f} {r['total_trial_s']:>11.0f} "
              f"{r['wall_s']:>7.0f} {r['best_fid']:>9.2f}")
    print(f"ASHA / full: kimg {report['kimg_ratio']:.2f}, trial time {report['trial_s_ratio']:.2f}, "
          f"wall {report['wall_ratio']:.2f}, best FID {report['best_fid_ratio']:.3f} (target <= 0.35, <= 1.10)")
    print(f"full search's best trial under ASHA: {report['full_best_config_in_asha']}")
    for r in (full, asha):
        print(f"\n{r['kind']}:")
        for t in sorted(r["trials"], key=lambda t: t["config"]):
            print(f"  {t['config']:<60} fid {t['best_fid']:8.2f}  kimg {t['kimg']:6.1f}  {t['wall_s']:6.0f} s  "
                  f"{t['stop_reason']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
