"""Quality table: train each configuration for a fixed wall-clock budget, judge 10,000 samples.

    python benchmarks/quality.py --rows default,hinge_sn,no_ema --minutes 6 --json quality.json

Each row runs `ganray train --data MNIST --workers 2 --max-minutes M` with its overrides, samples
10,000 images from the final checkpoint (EMA generator when on) and scores them with the
reference judge in ../shared/tools (judge FID, IS, modes), next to ganray's own FID when the run
evaluated itself. Rows run one after another; nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))

from ganray.checkpoint import resolve  # noqa: E402

# name -> --set overrides on top of the mnist preset (the default). The ablations were measured
# on the previous preset, the current one without R1 (PREVIOUS); rows named new_* are single
# changes to the current preset.
PREVIOUS = ["loss.r1_gamma=0"]
ROWS: dict[str, list[str]] = {
    "default": [],
    "previous": PREVIOUS,
    # the seed's DCGAN settings (unconditional, batch 64 per worker, Adam 2e-4), at width 32
    "dcgan_settings": [*PREVIOUS, "model.conditional=false", "train.batch_size_per_worker=64", "optim.lr_g=2e-4",
                       "optim.lr_d=2e-4"],
    "unconditional": [*PREVIOUS, "model.conditional=false"],
    "no_ema": [*PREVIOUS, "ema.enabled=false"],
    "minimax": [*PREVIOUS, "loss.kind=minimax"],
    "hinge": [*PREVIOUS, "loss.kind=hinge"],
    "lsgan": [*PREVIOUS, "loss.kind=lsgan"],
    "wgan_gp": [*PREVIOUS, "loss.kind=wgan-gp", "model.d_norm=none", "optim.d_steps=2", "optim.beta1=0.0",
                "optim.beta2=0.9"],
    "sn": [*PREVIOUS, "model.spectral_norm=true", "model.d_norm=none"],
    "hinge_sn": [*PREVIOUS, "loss.kind=hinge", "model.spectral_norm=true", "model.d_norm=none"],
    "r1": [*PREVIOUS, "loss.r1_gamma=0.1", "loss.r1_every=16"],  # = the current preset
    "diffaug": [*PREVIOUS, "augment.policy=translation,cutout"],
    "resnet": [*PREVIOUS, "model.arch=resnet", "model.g_width=16", "model.d_width=16", "model.spectral_norm=true",
               "model.d_norm=none", "loss.kind=hinge"],
    "width64": [*PREVIOUS, "model.g_width=64", "model.d_width=64"],
    "r1_sn": [*PREVIOUS, "model.spectral_norm=true", "model.d_norm=none", "loss.r1_gamma=0.1", "loss.r1_every=16"],
    "new_unconditional": ["model.conditional=false"],
    "new_no_ema": ["ema.enabled=false"],
    "new_lsgan": ["loss.kind=lsgan"],
}


def judge_checkpoint(checkpoint: str, samples: Path) -> dict:
    """`ganray sample` 10,000 images (EMA generator when on), scored by the reference judge."""
    subprocess.run([sys.executable, "-m", "ganray.cli", "sample", "--checkpoint", str(checkpoint),
                    "--n", "10000", "--out", str(samples)], check=True, capture_output=True)
    judge = subprocess.run([sys.executable, str(SHARED / "tools" / "judge_mnist.py"), str(SHARED / "data" / "mnist"),
                            str(samples)], capture_output=True, text=True, check=True)
    return json.loads(judge.stdout.strip().splitlines()[-1])


def run_row(name: str, overrides: list[str], minutes: float, out: Path, workers: int, extra: list[str]) -> dict:
    run_name = f"q-{name}-{int(time.time())}"
    cmd = [sys.executable, "-m", "ganray.cli", "train", "--data", str(SHARED / "data" / "mnist"),
           "--workers", str(workers), "--max-minutes", str(minutes), "--kimg", "100000", "--out", str(out),
           "--name", run_name, "--quiet"]
    for o in overrides + extra:
        cmd += ["--set", o]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        return {"row": name, "error": proc.stderr[-1500:]}
    run_dir = out / run_name
    summary = json.loads((run_dir / "summary.json").read_text())
    # The final checkpoint: equal budgets compare the state each configuration reached at the end.
    verdict = judge_checkpoint(summary["final_checkpoint"], run_dir / "judge_samples.npz")
    # What `ganray sample --checkpoint <run folder>` uses: the best checkpoint by ganray's own FID.
    chosen = resolve(run_dir)
    picked = verdict if str(chosen) == str(summary["final_checkpoint"]) else \
        judge_checkpoint(str(chosen), run_dir / "judge_samples_best.npz")
    return {
        "best_ckpt_judge_fid": picked["fid"], "best_ckpt_modes": picked.get("modes"), "best_ckpt": chosen.name,
        "row": name, "overrides": " ".join(overrides) or "(mnist preset)", "judge_fid": verdict["fid"],
        "judge_is": verdict.get("is"), "modes": verdict.get("modes"), "ganray_fid": summary.get("best_fid"),
        "kimg": summary["kimg"], "img_per_s": summary["img_per_s"], "train_s": summary.get("train_s"),
        "wall_s": wall, "run_dir": str(run_dir),
    }


def markdown(path: str) -> str:
    """QUALITY.md's ablation table rows from a --json file (last result per row wins)."""
    rows = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows[r["row"]] = r
    out = []
    for r in rows.values():
        if "error" in r:
            out.append(f"| {r['row']} | {' '.join(ROWS.get(r['row'], []))} | failed | | | | | | |")
            continue
        gf = f"{r['ganray_fid']:.1f}" if r.get("ganray_fid") is not None else "-"
        out.append(f"| {r['row']} | {r['overrides']} | {r['judge_fid']:.1f} | {r['modes']} | {r['judge_is']:.2f} | "
                   f"{r['best_ckpt_judge_fid']:.1f} ({r['best_ckpt']}) | {gf} | {r['kimg']:.0f} | {r['img_per_s']:.0f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="default", help=f"comma-separated rows from {', '.join(ROWS)}")
    ap.add_argument("--minutes", type=float, default=6.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="/tmp/ganray-quality")
    ap.add_argument("--set", dest="extra", action="append", default=[], help="extra override for every row")
    ap.add_argument("--json", help="append results to this JSON-lines file")
    ap.add_argument("--markdown", metavar="JSON", help="print QUALITY.md table rows from a --json file and exit")
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown(args.markdown))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{'row':<12} {'judge FID':>9} {'modes':>5} {'IS':>5} {'ganray FID':>10} {'kimg':>7} {'img/s':>7} {'best ckpt':>9}")
    for name in args.rows.split(","):
        res = run_row(name, ROWS[name], args.minutes, out, args.workers, args.extra)
        if "error" in res:
            print(f"{name:<12} FAILED: {res['error']}")
        else:
            gf = f"{res['ganray_fid']:.2f}" if res["ganray_fid"] is not None else "-"
            print(f"{name:<12} {res['judge_fid']:>9.2f} {res['modes']:>5} {res['judge_is']:>5.2f} {gf:>10} "
                  f"{res['kimg']:>7.1f} {res['img_per_s']:>7.0f} {res['best_ckpt_judge_fid']:>9.2f}", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
