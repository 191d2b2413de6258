"""Feature statistics: a float64 accumulator that all-reduces, and the real-data cache.

Real statistics are computed once per (dataset fingerprint, feature network fingerprint,
resolution, sample count) and cached as .npz (loaded with allow_pickle=False). The key is
stored inside the file and checked on load: a file made with another network, resolution or
dataset is refused with a message naming the mismatch, never silently reused.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ganray import dist
from ganray.metrics.cachefiles import (
    STATS_FORMAT,
    StatsCacheError,
    StatsKey,
    read_stats,
)

__all__ = ["STATS_FORMAT", "FeatureStats", "StatsCacheError", "StatsKey", "load_stats", "save_stats"]


class FeatureStats:
    """Running count, sum and sum of outer products of feature rows, in float64.

    Kept on the device of the first update so `all_reduce` works with gloo (CPU) and NCCL (CUDA).
    """

    def __init__(self, dim: int):
        self.dim = int(dim)
        self.count = 0
        self.sum: torch.Tensor | None = None  # (dim,)
        self.outer: torch.Tensor | None = None  # (dim, dim), sum of f f^T

    def _init(self, device: torch.device) -> None:
        self.sum = torch.zeros(self.dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=device)

    def update(self, features: torch.Tensor) -> "FeatureStats":
        f = torch.as_tensor(features).detach()
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise ValueError(f"features must have shape N x {self.dim}, got {tuple(f.shape)}")
        if self.sum is None:
            self._init(f.device)
        f = f.to(device=self.sum.device, dtype=torch.float64)
        self.count += f.shape[0]
        self.sum += f.sum(0)
        self.outer += f.T @ f
        return self

    def all_reduce(self) -> "FeatureStats":
        """Sum over ranks (collective: every rank must call it). A no-op at world size 1."""
        if self.sum is None:
            self._init(torch.device("cpu"))
        count = torch.tensor([float(self.count)], dtype=torch.float64, device=self.sum.device)
        packed = torch.cat([count, self.sum, self.outer.flatten()])
        dist.all_reduce_sum(packed)
        self.count = int(round(packed[0].item()))
        self.sum = packed[1 : 1 + self.dim].clone()
        self.outer = packed[1 + self.dim :].reshape(self.dim, self.dim).clone()
        return self

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu (dim,), unbiased covariance (dim, dim)) as float64 numpy arrays."""
        if self.count < 2:
            raise ValueError(f"need at least 2 feature rows for a covariance, have {self.count}")
        n = self.count
        mu = (self.sum / n).cpu().numpy()
        outer = self.outer.cpu().numpy()
        cov = (outer - n * np.outer(mu, mu)) / (n - 1)
        return mu, (cov + cov.T) / 2

    @classmethod
    def from_mean_cov(cls, mu: np.ndarray, cov: np.ndarray, count: int) -> "FeatureStats":
        """Rebuild an accumulator from (mu, cov, count); inverse of mean_cov."""
        mu, cov = np.asarray(mu, np.float64), np.asarray(cov, np.float64)
        stats = cls(len(mu))
        stats.count = int(count)
        stats.sum = torch.from_numpy(mu * count)
        stats.outer = torch.from_numpy(cov * (count - 1) + count * np.outer(mu, mu))
        return stats


def save_stats(path: str | Path, key: StatsKey, stats: FeatureStats, features: np.ndarray | None = None) -> Path:
    """Write mu, cov, count, the key and optional raw features atomically (temp file, os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mu, cov = stats.mean_cov()
    arrays = {"format": np.array(STATS_FORMAT), "key": np.array(json.dumps(asdict(key), sort_keys=True)),
              "mu": mu, "cov": cov, "count": np.array(stats.count, np.int64)}
    if features is not None:
        arrays["features"] = np.asarray(features, np.float32)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_stats(path: str | Path, key: StatsKey) -> tuple[FeatureStats, np.ndarray | None]:
    """(stats, raw features or None) from `path`, refusing a file whose key differs from `key`."""
    mu, cov, count, features = read_stats(path, key)
    return FeatureStats.from_mean_cov(mu, cov, count), features
