"""Evaluation inside training: prepared once on the driver, run collectively on the workers.

The driver resolves the feature network (training ganray's classifier on first use), computes
or loads the cached real statistics, and ships both to the workers through Ray's object store,
so workers on other nodes need neither the dataset nor the cache folder. When ganray's
classifier and the real statistics are both cached (every run after the first on a dataset),
the driver only reads and checks the two files (`cachefiles`), without torch: importing it
cost the driver ~1.2 s before the first worker could start.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ganray.config import Config

if TYPE_CHECKING:
    import torch


def prepare_eval(cfg: Config, info) -> dict[str, Any] | None:
    """Driver side. None when evaluation is off (eval.features=none, or auto with nothing usable)."""
    if cfg.eval.features == "none":
        return None
    keep = cfg.eval.fid_samples if {"kid", "pr"} & set(cfg.eval.metrics) else 0
    shipped = _cached_classifier_inputs(cfg, info, keep) or _built_inputs(cfg, info, keep)
    if shipped is None:
        return None
    if cfg.eval.fid_samples < 2048:
        warnings.warn(f"eval.fid_samples={cfg.eval.fid_samples} < 2048: FID is biased upwards at small sample "
                      "counts (Chong and Forsyth 2020); compare runs only at equal counts", stacklevel=2)
    import ray

    ship, real = shipped
    return {
        "net": ray.put(ship),
        "real": ray.put(real),
        "metrics": list(cfg.eval.metrics),
        "num_samples": cfg.eval.fid_samples,
        "feature_name": ship["name"],
    }


def _cached_classifier_inputs(cfg: Config, info, keep: int) -> tuple[dict, tuple] | None:
    """(what to ship, real statistics as arrays) read from the cache without torch, or None
    where anything is missing or does not fit: the full path then builds, checks and reports."""
    from ganray.metrics import cachefiles as cf

    if cfg.eval.features not in ("auto", "classifier") or info is None or not info.fingerprint:
        return None
    path = Path(cfg.eval.classifier_path or cf.default_classifier_path(cf.cache_dir(cfg.eval), info.fingerprint))
    try:
        data = path.expanduser().read_bytes()
        meta = cf.classifier_meta(data, str(path))
    except (OSError, cf.ClassifierError):
        return None
    fits = (meta.get("resolution"), meta.get("channels")) == (cfg.data.resolution, cfg.data.channels)
    if not fits or meta.get("dataset_fingerprint") != info.fingerprint:
        return None  # the full path names the mismatch (an error, or a warning for another dataset)
    key = cf.StatsKey(info.fingerprint, cf.classifier_fingerprint(data), info.resolution, int(cfg.eval.fid_samples))
    try:
        mu, cov, count, features = cf.read_stats(cf.cache_dir(cfg.eval) / key.filename(), key)
    except (OSError, cf.StatsCacheError):
        return None
    if keep and features is None:
        return None
    return {"name": "classifier", "classifier_bytes": data}, (mu, cov, count, features)


def _built_inputs(cfg: Config, info, keep: int) -> tuple[dict, tuple] | None:
    """The feature network built (the classifier trained on first use) and the real statistics
    computed or loaded: torch on the driver."""
    from ganray.metrics import build_feature_net, cache_dir, real_stats
    from ganray.metrics.realdata import LazyRealData

    # Read only if the classifier (trained on the labels) or the real statistics (a random
    # subset's features) are not cached yet.
    real = LazyRealData(cfg.data, info)
    net = build_feature_net(cfg.eval, cfg.data.resolution, cfg.data.channels, real.fingerprint,
                            labelled=real if real.has_labels else None, log=_log)
    if net is None:
        return None
    stats, features = real_stats(net, real, num_samples=cfg.eval.fid_samples, cache_dir=cache_dir(cfg.eval),
                                 keep_features=keep, log=_log)
    ship: dict[str, Any] = {"name": net.name}
    if net.name == "classifier":
        from ganray.metrics.classifier import default_classifier_path

        path = cfg.eval.classifier_path or default_classifier_path(cache_dir(cfg.eval), real.fingerprint)
        ship["classifier_bytes"] = Path(path).expanduser().read_bytes()
    else:
        ship["inception_weights"] = cfg.eval.inception_weights
    mu, cov = stats.mean_cov()
    return ship, (mu, cov, stats.count, features)


def make_evaluator(cfg: Config, eval_info: dict[str, Any], device: torch.device) -> Callable:
    """Worker side: a callable(TrainState) -> metrics dict, identical on every rank."""
    import ray

    from ganray.metrics import evaluate_generator
    from ganray.metrics.features import classifier_net, inception_net

    ship = ray.get(eval_info["net"])
    if ship["name"] == "classifier":
        tmp = Path(tempfile.mkdtemp(prefix="ganray-eval-")) / "classifier.safetensors"
        tmp.write_bytes(ship["classifier_bytes"])
        net = classifier_net(tmp, device)
    else:
        net = inception_net(ship.get("inception_weights"), device)
    from ganray.metrics.stats import FeatureStats

    mu, cov, count, features = ray.get(eval_info["real"])
    stats = FeatureStats.from_mean_cov(mu, cov, count)

    def evaluate(st) -> dict[str, float]:
        out = evaluate_generator(
            st.sampler(), net, stats, num_samples=eval_info["num_samples"], batch_size=500,
            latent_dim=cfg.model.latent_dim, device=device, seed=cfg.train.seed + 1,
            num_classes=st.num_classes if cfg.model.conditional else None,
            metrics=eval_info["metrics"], real_features=features,
        )
        return {k: float(v) for k, v in out.items() if v is not None}

    return evaluate


def _log(message: str) -> None:
    print(f"ganray: {message}", flush=True)
