"""Evaluation costs: Frechet distance at d=2048, classifier fit on MNIST, eval of 10k samples.

    python benchmarks/metrics_bench.py [--data ../shared/data/mnist] [--threads 2] [--json out.json]

Prints a table (wall and CPU seconds) and optionally writes JSON. CPU time is reported beside
wall time because a shared machine inflates wall time; on an idle machine they agree.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings

import numpy as np
import torch


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def bench_frechet(repeats: int = 3) -> dict:
    from ganray.metrics import frechet_distance

    rng = np.random.default_rng(0)
    d = 2048
    a, b = rng.standard_normal((4096, d)), rng.standard_normal((4096, d)) * 1.1
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    runs = [timed(lambda: frechet_distance(a.mean(0), s1, b.mean(0), s2)) for _ in range(repeats)]
    best = min(runs, key=lambda r: r[1])
    return {"what": "frechet_distance d=2048 (best of 3)", "wall_s": best[1], "cpu_s": best[2], "value": best[0]}


def bench_classifier(data: str) -> tuple[dict, str]:
    from ganray.config import DataConfig
    from ganray.metrics import classifier as clf
    from ganray.metrics.realdata import load_real_data

    real = load_real_data(DataConfig(source=data, resolution=32, channels=1))
    (net, meta), wall, cpu = timed(lambda: clf.fit_classifier(real.images(), real.label_tensor(),
                                                              dataset_fingerprint=real.fingerprint))
    path = clf.save_classifier(tempfile.mkdtemp() + "/clf.safetensors", net, meta)
    return {"what": f"classifier fit, {meta.train_images} train / {meta.heldout_images} held out, "
                    f"{meta.epochs} epochs", "wall_s": wall, "cpu_s": cpu, "value": meta.accuracy}, str(path)


def bench_eval(data: str, classifier: str, metrics: tuple[str, ...]) -> dict:
    from ganray.config import EvalConfig, mnist
    from ganray.metrics import build_feature_net, evaluate_generator, real_stats
    from ganray.metrics.realdata import load_real_data
    from ganray.models import build_generator

    cfg = mnist()  # DCGAN, latent 100, width 64, 32 x 32 x 1
    real = load_real_data(cfg.data.model_copy(update={"source": data}))
    net = build_feature_net(EvalConfig(features="classifier", classifier_path=classifier), 32, 1)
    stats, features = real_stats(net, real, num_samples=10_000)
    G = build_generator(cfg.model, cfg.data, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = evaluate_generator(G, net, stats, num_samples=10_000, batch_size=250, latent_dim=cfg.model.latent_dim,
                                 device="cpu", seed=0, metrics=metrics, real_features=features)
    return {"what": f"evaluate_generator 10k samples, DCGAN 32px, classifier, {'+'.join(metrics)}",
            "wall_s": out["eval_s"], "cpu_s": None, "value": out.get("fid")}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="../shared/data/mnist")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    p.add_argument("--skip", default="", help="comma-separated: frechet,classifier,eval")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    skip = set(args.skip.split(","))
    rows = []
    if "frechet" not in skip:
        rows.append(bench_frechet())
    if "classifier" not in skip or "eval" not in skip:
        row, path = bench_classifier(args.data)
        rows.append(row)
        if "eval" not in skip:
            rows.append(bench_eval(args.data, path, ("fid",)))
            rows.append(bench_eval(args.data, path, ("fid", "kid", "is", "pr")))
    for r in rows:
        cpu = f"{r['cpu_s']:8.2f}" if r["cpu_s"] is not None else "       -"
        print(f"{r['what']:<70} wall {r['wall_s']:8.2f} s  cpu {cpu} s  value {r['value']:.6g}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
