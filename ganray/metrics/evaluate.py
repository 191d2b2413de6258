"""Scoring a generator or a set of images against cached real statistics.

evaluate_generator is collective: each rank generates its share of the samples, statistics are
all-reduced, raw features (KID/PR) and class probabilities (IS, modes) are gathered, rank 0
computes, and every rank returns rank 0's dict. Sample i's noise depends only on (seed, i), so
the evaluated set is the same whatever the world size or batch size.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from ganray import dist
from ganray.metrics.fid import frechet_distance
from ganray.metrics.isc import inception_score, mode_stats
from ganray.metrics.kid import kid
from ganray.metrics.pr import precision_recall
from ganray.metrics.stats import FeatureStats, StatsKey, load_stats, save_stats

NOISE_BLOCK = 256  # samples per noise generator: block b covers samples [256 b, 256 (b + 1))
MAX_RAW_FEATURES = 10_000  # KID/PR use at most this many samples per side
MIN_FID_SAMPLES = 2048  # below this FID's small-sample bias dominates (Chong and Forsyth 2020)
METRICS = ("fid", "kid", "is", "pr")


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate each rank's rows (row counts may differ) in rank order; collective."""
    if not dist.is_distributed():
        return t
    import torch.distributed as torch_dist  # only reached under a process group

    n = torch.tensor([t.shape[0]], dtype=torch.int64, device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.world_size())]
    torch_dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    padded = torch.zeros((max(sizes), *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    torch_dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def compute_metrics(metrics, fake_stats: FeatureStats, real_stats: FeatureStats, *, fake_features=None,
                    real_features=None, fake_probs=None) -> dict[str, float]:
    """Metric values from statistics, raw features (n x dim) and class probabilities (n x K)."""
    out: dict[str, float] = {}
    if "fid" in metrics:
        out["fid"] = frechet_distance(*real_stats.mean_cov(), *fake_stats.mean_cov())
    if "kid" in metrics:
        out["kid"], out["kid_std"] = kid(real_features, fake_features)
    if "pr" in metrics:
        out["precision"], out["recall"] = precision_recall(real_features, fake_features)
    if fake_probs is not None:
        if "is" in metrics:
            out["is"], out["is_std"] = inception_score(fake_probs)
        entropy, modes = mode_stats(fake_probs)
        out["mode_entropy"], out["modes"] = entropy, float(modes)
    return out


def _check_request(metrics, feature_net, real_features, num_samples: int) -> tuple[str, ...]:
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRICS)}")
    if ("kid" in metrics or "pr" in metrics) and real_features is None:
        raise ValueError("kid and pr need real_features (raw real feature rows), not only statistics")
    if "is" in metrics and feature_net.num_classes is None:
        raise ValueError("is needs a feature network with a classifier head")
    if num_samples < MIN_FID_SAMPLES:
        warnings.warn(f"evaluating with {num_samples} samples (< {MIN_FID_SAMPLES}): FID is biased upwards at "
                      "small sample counts (Chong and Forsyth 2020); compare only runs with the same count",
                      stacklevel=3)
    return metrics


def _noise(seed: int, indices: torch.Tensor, latent_dim: int) -> torch.Tensor:
    """z for the given global sample indices (sorted); each 256-sample block has its own generator."""
    parts = []
    for block in torch.unique(indices // NOISE_BLOCK).tolist():
        state = np.random.SeedSequence([seed, block]).generate_state(1, dtype=np.uint64)[0]
        g = torch.Generator().manual_seed(int(state) & (2**63 - 1))
        z = torch.randn(NOISE_BLOCK, latent_dim, generator=g)
        in_block = indices[(indices // NOISE_BLOCK) == block] - block * NOISE_BLOCK
        parts.append(z[in_block])
    return torch.cat(parts)


def _quantise(x: torch.Tensor) -> torch.Tensor:
    """Round to the uint8 grid real images live on (what saving to PNG/npz would do)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round_().div_(127.5).sub_(1)


class _Collector:
    """Per-rank accumulation of statistics, raw features (first `cap` indices) and probabilities."""

    def __init__(self, feature_net, metrics, cap: int = MAX_RAW_FEATURES):
        self.net, self.stats, self.cap = feature_net, FeatureStats(feature_net.dim), cap
        self.keep_raw = "kid" in metrics or "pr" in metrics
        self.idx, self.raw, self.probs = [], [], []

    def add(self, images: torch.Tensor, indices: torch.Tensor) -> None:
        f, logits = self.net.features_and_logits(images)
        self.stats.update(f)
        if logits is not None and self.net.num_classes is not None:
            self.probs.append(torch.softmax(logits.double(), dim=1).cpu())
        self.idx.append(indices.cpu())
        if self.keep_raw:
            self.raw.append(f.cpu())

    def _cat(self, parts: list, width: int, dtype) -> torch.Tensor:
        # A rank with no samples still joins every gather, with a 0-row tensor.
        t = torch.cat(parts) if parts else torch.zeros((0, width), dtype=dtype)
        return t.to(self.stats.sum.device)

    def finish(self, metrics, real_stats, real_features) -> dict[str, float]:
        """Collective: reduce and gather, compute on rank 0, broadcast."""
        self.stats.all_reduce()
        idx = all_gather_cat(self._cat([i[:, None] for i in self.idx], 1, torch.int64))[:, 0]
        order = torch.argsort(idx).cpu()  # global sample order, identical for any world size
        fake_features = fake_probs = None
        if self.keep_raw:
            fake_features = all_gather_cat(self._cat(self.raw, self.net.dim, torch.float32)).cpu()[order][: self.cap]
        if self.net.num_classes is not None:
            fake_probs = all_gather_cat(self._cat(self.probs, self.net.num_classes, torch.float64)).cpu()[order]
        result = None
        if dist.rank() == 0:
            result = compute_metrics(metrics, self.stats, real_stats, fake_features=fake_features,
                                     real_features=real_features, fake_probs=fake_probs)
        return dist.broadcast_object(result)


def evaluate_generator(G, feature_net, real_stats: FeatureStats, *, num_samples: int, batch_size: int,
                       latent_dim: int, device, seed: int, num_classes: int | None = None,
                       metrics=("fid",), real_features=None) -> dict[str, float]:
    """Score G on num_samples samples (collective; every rank returns the same dict, with eval_s).

    Rank r takes 256-sample noise blocks r, r + W, ...; a conditional G gets labels i % num_classes.
    G is switched to eval mode inside and restored afterwards.
    """
    t0 = time.perf_counter()
    metrics = _check_request(metrics, feature_net, real_features, num_samples)
    G = dist.unwrap(G)
    was_training = G.training
    G.eval()
    try:
        rank, world = dist.rank(), dist.world_size()
        blocks = range(rank, (num_samples + NOISE_BLOCK - 1) // NOISE_BLOCK, world)
        mine = torch.cat([torch.arange(b * NOISE_BLOCK, min((b + 1) * NOISE_BLOCK, num_samples)) for b in blocks]
                         or [torch.zeros(0, dtype=torch.int64)])  # global sample indices, sorted
        z_all = _noise(seed, mine, latent_dim) if len(mine) else torch.zeros(0, latent_dim)
        collector = _Collector(feature_net, metrics)
        with torch.no_grad():
            for i in range(0, len(mine), batch_size):
                idx, z = mine[i : i + batch_size], z_all[i : i + batch_size].to(device)
                if num_classes:
                    images = G(z, (idx % num_classes).to(device))
                else:
                    images = G(z)
                collector.add(_quantise(images.float()), idx)
        result = collector.finish(metrics, real_stats, real_features)
    finally:
        G.train(was_training)
    return {**result, "eval_s": time.perf_counter() - t0}


def evaluate_images(images, feature_net, real_stats: FeatureStats, *, metrics=("fid",), real_features=None,
                    batch_size: int = 500) -> dict[str, float]:
    """Score a fixed set of images (uint8 N x H x W x C or float N x C x H x W in [-1, 1]); one process."""
    from ganray.metrics.classifier import as_float_images

    t0 = time.perf_counter()
    x = as_float_images(images)
    metrics = _check_request(metrics, feature_net, real_features, len(x))
    collector = _Collector(feature_net, metrics)
    for i in range(0, len(x), batch_size):
        collector.add(x[i : i + batch_size], torch.arange(i, min(i + batch_size, len(x))))
    result = collector.finish(metrics, real_stats, real_features)
    return {**result, "eval_s": time.perf_counter() - t0}


def real_stats(feature_net, real, *, num_samples: int, cache_dir=None, keep_features: int = MAX_RAW_FEATURES,
               batch_size: int = 500, log=None) -> tuple[FeatureStats, np.ndarray | None]:
    """(statistics, up to keep_features raw feature rows) of min(num_samples, len(real)) real images.

    real: RealData. Cached under cache_dir keyed on (dataset, network, resolution, num_samples);
    a cached file for other inputs is refused (StatsCacheError). One process; not collective.
    """
    from pathlib import Path

    key = StatsKey(real.fingerprint, feature_net.fingerprint, real.resolution, int(num_samples))
    path = Path(cache_dir) / key.filename() if cache_dir is not None else None
    if path is not None and path.is_file():
        stats, features = load_stats(path, key)
        if features is not None or keep_features == 0:
            return stats, features
    # A fixed random subset: sources stored class by class must not give a class-biased prefix.
    n = min(int(num_samples), len(real))
    order = torch.randperm(len(real), generator=torch.Generator().manual_seed(0))[:n].sort().values
    stats, kept = FeatureStats(feature_net.dim), []
    for i in range(0, n, batch_size):
        f = feature_net.features(real.images(order[i : i + batch_size].numpy()))
        stats.update(f)
        if sum(len(k) for k in kept) < keep_features:
            kept.append(f.cpu())
    features = torch.cat(kept)[:keep_features].numpy() if kept and keep_features else None
    if path is not None:
        save_stats(path, key, stats, features)
        if log is not None:
            log(f"cached real statistics of {n} images at {path}")
    return stats, features
