"""Frechet distance between two Gaussians fitted to features (Heusel et al. 2017, FID).

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

The textbook code takes scipy.linalg.sqrtm(S1 S2), which is slow (tens of seconds at d = 2048
on two cores) and returns complex parts or NaN when S1 S2 is near-singular. Here the trace
term comes from a symmetric PSD matrix instead:

    S1 = B^T B (pivoted Cholesky, rank r)  =>  eig(S1 S2) \\ {0} = eig(B S2 B^T)  (r x r, PSD),

so tr((S1 S2)^(1/2)) = sum sqrt(eigvalsh(B S2 B^T)), with tiny negative eigenvalues from
rounding clipped to zero. Pivoted Cholesky (LAPACK ?pstrf) handles rank-deficient S1 (fewer
samples than dimensions, dead ReLU units) without jitter, and eigenvalues alone are much
cheaper than the eigenvectors a matrix square root needs.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
from scipy.linalg import blas, lapack


def _check(name: str, a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}; expected {shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return a


def _factor(sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Pivoted Cholesky of symmetric PSD sigma (d x d): P^T sigma P = U^T U.

    Returns (U upper triangular d x d, permutation p with sigma[p][:, p] = U^T U, rank r);
    only the first r rows of U are meaningful.
    """
    c, piv, rank, info = lapack.dpstrf((sigma + sigma.T) / 2, lower=0)
    if info < 0:
        raise ValueError(f"pivoted Cholesky failed (LAPACK info={info})")
    return np.triu(c), piv - 1, int(rank)


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((sigma1 sigma2)^(1/2)) for symmetric PSD inputs, real by construction."""
    U, p, r = _factor(sigma1)
    if r == 0:
        return 0.0
    S = sigma2[np.ix_(p, p)]  # sigma2 in sigma1's pivot order
    if r == U.shape[0]:
        # Full rank: two triangular products, half the flops of general matmuls.
        US = blas.dtrmm(1.0, U, S, side=0, lower=0)
        M = blas.dtrmm(1.0, U, US, side=1, lower=0, trans_a=1)  # U S U^T
    else:
        Ur = U[:r]  # r x d
        M = Ur @ S @ Ur.T
    eig = scipy.linalg.eigh((M + M.T) / 2, eigvals_only=True, driver="evr", check_finite=False)
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    mu: (d,), sigma: (d, d) symmetric PSD. Never complex, never NaN for finite PSD inputs;
    clipped at 0 (identical inputs give 0 up to rounding, which can fall a hair below).
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    d = mu1.shape[0]
    mu1 = _check("mu1", mu1, (d,))
    mu2 = _check("mu2", mu2, (d,))
    sigma1 = _check("sigma1", sigma1, (d, d))
    sigma2 = _check("sigma2", sigma2, (d, d))
    diff = mu1 - mu2
    tr_covmean = trace_sqrt_product(sigma1, sigma2)
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)
    return max(value, 0.0)
