"""`ganray evaluator fit`: train ganray's evaluation classifier on a labelled dataset.

    ganray evaluator fit --data ../shared/data/mnist [--out clf.safetensors] [--epochs 5]

Without --out the file goes where eval.features=classifier looks for it: the cache dir
(eval.cache_dir / $GANRAY_CACHE / ~/.cache/ganray), keyed by the dataset fingerprint.
"""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("evaluator", help="manage the classifier used for FID/KID/IS/PR features")
    sub = p.add_subparsers(dest="evaluator_command", metavar="ACTION", required=True)
    fit = sub.add_parser("fit", help="train the evaluation classifier on labelled real data")
    fit.add_argument("--data", required=True, help="labelled dataset: digits, IDX folder, image folder, Parquet, .npz")
    fit.add_argument("--out", help="output .safetensors (default: the cache, keyed by dataset fingerprint)")
    fit.add_argument("--epochs", type=int, default=6)
    fit.add_argument("--resolution", type=int, choices=[16, 32, 64], default=32, help="data.resolution")
    fit.add_argument("--channels", type=int, choices=[1, 3], default=1, help="data.channels")
    fit.add_argument("--heldout", type=int, default=2000, help="held-out images for the accuracy (at most 1/5)")
    fit.add_argument("--max-images", type=int, default=60_000, help="train on a seeded subset of at most this many")
    fit.add_argument("--cache-dir", help="eval.cache_dir")
    fit.add_argument("--seed", type=int, default=0)
    fit.set_defaults(func=run_fit)
    return p


def run_fit(args) -> int:
    from ganray.config import DataConfig, EvalConfig
    from ganray.metrics import classifier as clf
    from ganray.metrics.features import cache_dir
    from ganray.metrics.realdata import load_real_data

    if args.epochs < 1:
        return _fail(f"--epochs must be at least 1, got {args.epochs}")
    try:
        data_cfg = DataConfig(source=args.data, resolution=args.resolution, channels=args.channels)
        real = load_real_data(data_cfg, max_rows=args.max_images)
        if real.labels is None:
            raise clf.ClassifierError(f"data {args.data!r} has no labels; the evaluation classifier needs them")
        out = args.out or clf.default_classifier_path(cache_dir(EvalConfig(cache_dir=args.cache_dir)), real.fingerprint)
        print(f"training on {len(real)} images of {args.data} ({real.num_classes} classes, "
              f"{args.resolution} px, {args.channels} channel(s))", file=sys.stderr)
        net, meta = clf.fit_classifier(real.images(), real.label_tensor(), dataset_fingerprint=real.fingerprint,
                                       epochs=args.epochs, heldout=args.heldout, seed=args.seed,
                                       log=lambda m: print(m, file=sys.stderr))
        path = clf.save_classifier(out, net, meta)
    except (ValueError, OSError) as e:  # DataError, ClassifierError, ConfigError are ValueErrors
        return _fail(str(e))
    print(f"held-out accuracy {meta.accuracy:.4f} on {meta.heldout_images} images; "
          f"fit {meta.fit_seconds:.1f} s; wrote {path}")
    return 0


def _fail(message: str) -> int:
    print(f"ganray: error: {message}", file=sys.stderr)
    return 2
