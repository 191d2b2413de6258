"""Evaluation inside training: prepared once on the driver, run collectively on the workers.

The driver resolves the feature network (training ganray's classifier on first use), computes
or loads the cached real statistics, and ships both to the workers through Ray's object store,
so workers on other nodes need neither the dataset nor the cache folder.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from ganray.config import Config


def prepare_eval(cfg: Config, info) -> dict[str, Any] | None:
    """Driver side. None when evaluation is off (eval.features=none, or auto with nothing usable)."""
    import ray

    from ganray.metrics import build_feature_net, cache_dir, real_stats
    from ganray.metrics.realdata import LazyRealData

    if cfg.eval.features == "none":
        return None
    # Read only if the classifier (trained on the labels) or the real statistics (a random
    # subset's features) are not cached yet.
    real = LazyRealData(cfg.data, info)
    net = build_feature_net(cfg.eval, cfg.data.resolution, cfg.data.channels, real.fingerprint,
                            labelled=real if real.has_labels else None, log=_log)
    if net is None:
        return None
    if cfg.eval.fid_samples < 2048:
        warnings.warn(f"eval.fid_samples={cfg.eval.fid_samples} < 2048: FID is biased upwards at small sample "
                      "counts (Chong and Forsyth 2020); compare runs only at equal counts", stacklevel=2)
    keep = cfg.eval.fid_samples if {"kid", "pr"} & set(cfg.eval.metrics) else 0
    stats, features = real_stats(net, real, num_samples=cfg.eval.fid_samples, cache_dir=cache_dir(cfg.eval),
                                 keep_features=keep, log=_log)
    ship: dict[str, Any] = {"name": net.name}
    if net.name == "classifier":
        from ganray.metrics.classifier import default_classifier_path

        path = cfg.eval.classifier_path or default_classifier_path(cache_dir(cfg.eval), real.fingerprint)
        ship["classifier_bytes"] = Path(path).expanduser().read_bytes()
    else:
        ship["inception_weights"] = cfg.eval.inception_weights
    return {
        "net": ray.put(ship),
        "real": ray.put((stats, features)),
        "metrics": list(cfg.eval.metrics),
        "num_samples": cfg.eval.fid_samples,
        "feature_name": net.name,
    }


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
    stats, features = ray.get(eval_info["real"])

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
