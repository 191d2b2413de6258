"""Frechet distance between two Gaussians fitted to features (Heusel et al. 2017, FID).

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

The textbook code takes scipy.linalg.sqrtm(S1 S2), which is slow (tens of seconds at d = 2048
on two cores) and returns complex parts or NaN when S1 S2 is near-singular. Here the trace
term comes from the eigenvalues of a symmetric PSD matrix instead. When both covariances are
positive definite (the usual case with more samples than dimensions):

    S1 = L L^T, S2 = K K^T (Cholesky), C = K^T L  =>  eig(S1 S2) = eig(L^T S2 L) = eig(C^T C),

so tr((S1 S2)^(1/2)) = sum sqrt(eigvalsh(C^T C)): two Cholesky factorisations, one triangular
product and one symmetric rank-k update, then eigenvalues only (no eigenvectors, which a
matrix square root needs). When S1 or S2 is singular (fewer samples than dimensions, dead ReLU
units), S1 = B^T B comes from a pivoted Cholesky of rank r (LAPACK ?pstrf, no jitter) and the
r x r matrix B S2 B^T takes C^T C's place. Tiny negative eigenvalues from rounding are clipped
to zero.
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


def _sqrt_eigenvalue_sum(m: np.ndarray, lower: bool) -> float:
    """sum sqrt(eigenvalues) of symmetric PSD m, read from one triangle (m is overwritten)."""
    eig = scipy.linalg.eigh(m, lower=lower, eigvals_only=True, driver="evd", overwrite_a=True,
                            check_finite=False)
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def _trace_sqrt_definite(sigma1: np.ndarray, sigma2: np.ndarray) -> float | None:
    """The fast path for positive definite sigma1 and sigma2; None when either is not."""
    L, info1 = lapack.dpotrf(sigma1, lower=1, clean=1)
    if info1 != 0:
        return None
    K, info2 = lapack.dpotrf(sigma2, lower=1, clean=1)
    if info2 != 0:
        return None
    C = blas.dtrmm(1.0, L, K.T, side=1, lower=1)  # K^T L, L triangular: half a general product's flops
    M = blas.dsyrk(1.0, C, trans=1, lower=0)  # upper triangle of C^T C = L^T S2 L
    return _sqrt_eigenvalue_sum(M, lower=False)


def _trace_sqrt_pivoted(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Any symmetric PSD inputs, rank-deficient ones included."""
    U, p, r = _factor(sigma1)
    if r == 0:
        return 0.0
    Ur = U[:r]  # r x d, sigma1[p][:, p] = Ur^T Ur
    M = Ur @ sigma2[np.ix_(p, p)] @ Ur.T
    return _sqrt_eigenvalue_sum((M + M.T) / 2, lower=True)


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((sigma1 sigma2)^(1/2)) for symmetric PSD inputs, real by construction."""
    value = _trace_sqrt_definite(sigma1, sigma2)
    return _trace_sqrt_pivoted(sigma1, sigma2) if value is None else value


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
