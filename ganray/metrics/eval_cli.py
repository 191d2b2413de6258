"""`ganray eval`: score a checkpoint's generator, or any program's images, against real data.

    ganray eval --checkpoint runs/mnist/checkpoint_000010 --metrics fid,kid,is,pr
    ganray eval --samples samples.npz --data ../shared/data/mnist --json scores.json

Prints a table and optionally writes JSON. Exit 0 on success, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

# Kept in step with ganray.metrics.evaluate.METRICS (a test checks); importing that pulls in torch.
METRICS = ("fid", "kid", "is", "pr")

_CLASSIFIER_ROWS = 20_000  # labelled images a first-use classifier may train on


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="FID/KID/IS/precision-recall of a checkpoint or an .npz of images")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="checkpoint folder, or a run folder (its best checkpoint)")
    src.add_argument("--samples", help=".npz with 'images': uint8 N x H x W x C (or N x H x W), from any program")
    p.add_argument("--data", help="real data to compare against (default: the checkpoint's data.source)")
    p.add_argument("--metrics", help=f"comma-separated subset of {','.join(METRICS)} (default: eval.metrics)")
    p.add_argument("--num-samples", type=int, help="generated samples, also real samples (default: eval.fid_samples)")
    p.add_argument("--features", choices=["auto", "classifier", "inception"], help="feature network (eval.features)")
    p.add_argument("--classifier", help="classifier .safetensors file (eval.classifier_path)")
    p.add_argument("--inception-weights", help="Inception weights file (eval.inception_weights)")
    p.add_argument("--cache-dir", help="cache for classifiers and real statistics (eval.cache_dir)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0, help="noise seed for the generated samples")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=run)
    return p


def _fail(message: str) -> int:
    print(f"ganray: error: {message}", file=sys.stderr)
    return 2


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def load_samples(path: str) -> np.ndarray:
    """uint8 N x H x W x C from an .npz's 'images' array (N x H x W is taken as one channel)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z.files:
                raise ValueError(f"{path} has no 'images' array (found {z.files})")
            x = z["images"]
    except (OSError, ValueError) as e:
        raise ValueError(str(e) if "images" in str(e) else f"cannot read {path}: {e}") from None
    if x.dtype != np.uint8:
        raise ValueError(f"{path}: 'images' has dtype {x.dtype}; expected uint8 pixels 0..255")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or x.shape[1] != x.shape[2] or len(x) < 2:
        raise ValueError(f"{path}: 'images' has shape {x.shape}; expected N x H x W x C with H == W, C in (1, 3)")
    return x


def parse_metrics(text: str) -> list[str]:
    metrics = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"--metrics {text!r}: choose a comma-separated subset of {','.join(METRICS)}")
    return metrics


def _configs(args, cfg):
    """(data config, eval config) from the checkpoint's config (or defaults) and the flags."""
    from ganray.config import Config

    cfg = (cfg or Config()).model_copy(deep=True)
    if args.data:
        cfg.data.source = args.data
    for flag, key in (("features", "features"), ("classifier", "classifier_path"),
                      ("inception_weights", "inception_weights"), ("cache_dir", "cache_dir")):
        if getattr(args, flag):
            setattr(cfg.eval, key, getattr(args, flag))
    if not args.features and args.classifier:
        cfg.eval.features = "classifier"
    elif cfg.eval.features == "none":  # the run trained without evaluation; asking for it now means auto
        cfg.eval.features = "auto"
    if args.metrics:
        cfg.eval.metrics = parse_metrics(args.metrics)
    if args.num_samples:
        cfg.eval.fid_samples = args.num_samples
    return cfg


def _evaluate(args) -> dict:
    import torch

    from ganray.metrics.evaluate import evaluate_generator, evaluate_images, real_stats
    from ganray.metrics.features import build_feature_net, cache_dir
    from ganray.metrics.realdata import load_real_data

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    G = cfg = images = None
    if args.checkpoint:
        from ganray.checkpoint import load_generator

        G, cfg = load_generator(args.checkpoint, device=device)
    else:
        if not args.data:
            raise ValueError("--samples needs --data: the real images to compare against")
        images = load_samples(args.samples)
    cfg = _configs(args, cfg)
    if images is not None:
        if images.shape[1] not in (16, 32, 64):
            raise ValueError(f"{args.samples}: images are {images.shape[1]} px; ganray evaluates 16, 32 or 64 px")
        cfg.data.resolution, cfg.data.channels = images.shape[1], images.shape[3]
    num_samples, metrics = cfg.eval.fid_samples, tuple(cfg.eval.metrics)
    real = load_real_data(cfg.data, max_rows=max(num_samples, _CLASSIFIER_ROWS))
    net = build_feature_net(cfg.eval, cfg.data.resolution, cfg.data.channels, real.fingerprint, device,
                            labelled=real, log=_log)
    if net is None:
        raise ValueError("no feature network: eval.features resolved to none (pass --features)")
    stats, features = real_stats(net, real, num_samples=num_samples, cache_dir=cache_dir(cfg.eval), log=_log)
    if images is not None:
        out = evaluate_images(images[:num_samples], net, stats, metrics=metrics, real_features=features,
                              batch_size=args.batch_size)
    else:
        num_classes = (cfg.data.num_classes or real.num_classes) if cfg.model.conditional else None
        out = evaluate_generator(G, net, stats, num_samples=num_samples, batch_size=args.batch_size,
                                 latent_dim=cfg.model.latent_dim, device=device, seed=args.seed,
                                 num_classes=num_classes, metrics=metrics, real_features=features)
    n_generated = min(num_samples, len(images)) if images is not None else num_samples
    return {**out, "num_samples": n_generated, "real_samples": min(num_samples, len(real)),
            "features": net.name, "feature_net": net.fingerprint, "dataset": real.fingerprint}


def format_table(result: dict) -> str:
    rows = [(k, f"{v:.6g}" if isinstance(v, float) else str(v)) for k, v in result.items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def run(args) -> int:
    from ganray.metrics.classifier import ClassifierError
    from ganray.metrics.inception import InceptionUnavailable
    from ganray.metrics.stats import StatsCacheError

    errors = (ValueError, OSError, ClassifierError, InceptionUnavailable, StatsCacheError)
    try:
        from ganray.checkpoint import CheckpointError

        errors += (CheckpointError,)
    except ImportError:
        pass
    if args.num_samples is not None and args.num_samples < 16:
        return _fail(f"--num-samples must be at least 16, got {args.num_samples}")
    try:
        result = _evaluate(args)
    except errors as e:  # DataError, ConfigError and pydantic errors are ValueErrors
        return _fail(str(e))
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0
