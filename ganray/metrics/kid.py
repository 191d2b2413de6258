"""Kernel Inception Distance (Binkowski et al. 2018, "Demystifying MMD GANs").

Unbiased estimate of MMD^2 between real and generated features under the cubic polynomial
kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets; the spread over subsets is
reported as the standard deviation.
"""

from __future__ import annotations

import numpy as np


def _as_features(name: str, a) -> np.ndarray:
    a = np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 2:
        raise ValueError(f"{name} must be a 2-d array of at least 2 feature rows, got shape {a.shape}")
    return a


def _kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a.b / d + 1)^3 for all row pairs: len(a) x len(b)."""
    k = a @ b.T
    k /= a.shape[1]
    k += 1.0
    return k * k * k  # cheaper than ** 3 on large float64 arrays


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two equal-size samples x, y (m x d) with the cubic polynomial kernel."""
    m = len(x)
    k_xx, k_yy, k_xy = _kernel(x, x), _kernel(y, y), _kernel(x, y)
    # Off-diagonal means of k_xx and k_yy (the diagonal would bias the estimate), full mean of k_xy.
    off_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    off_yy = (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(off_xx + off_yy - 2.0 * k_xy.mean())


def kid(real, fake, *, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """(mean, std) of unbiased MMD^2 over `num_subsets` random subsets.

    real: (n_r, d), fake: (n_f, d) features. The subset size is capped by min(n_r, n_f);
    subsets are drawn without replacement within a subset, independently across subsets.
    """
    x, y = _as_features("real features", real), _as_features("fake features", fake)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"real features have dimension {x.shape[1]}, fake features {y.shape[1]}")
    if num_subsets < 1 or subset_size < 2:
        raise ValueError(f"need num_subsets >= 1 and subset_size >= 2, got {num_subsets}, {subset_size}")
    m = min(subset_size, len(x), len(y))
    rng = np.random.default_rng(seed)
    values = np.array([
        mmd2_unbiased(x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)])
        for _ in range(num_subsets)
    ])
    return float(values.mean()), float(values.std())
