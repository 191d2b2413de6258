"""Metric formulas: FID against the textbook sqrtm formula, KID, precision/recall, IS, modes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from ganray.metrics import frechet_distance, inception_score, kid, mode_stats, precision_recall
from ganray.metrics.kid import mmd2_unbiased


def _gaussian_stats(rng, n: int, d: int, scale: float = 1.0, shift: float = 0.0):
    mix = rng.standard_normal((d, d)) / np.sqrt(d) + np.eye(d)
    x = rng.standard_normal((n, d)) @ mix * scale + shift
    return x.mean(0), np.cov(x, rowvar=False)


def _textbook_fid(mu1, s1, mu2, s2) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean[0] if isinstance(covmean, tuple) else covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("d", [4, 32, 128])
def test_fid_matches_textbook_formula(d):
    rng = np.random.default_rng(d)
    a = _gaussian_stats(rng, 5 * d, d)
    b = _gaussian_stats(rng, 5 * d, d, scale=1.5, shift=0.3)
    ours, reference = frechet_distance(*a, *b), _textbook_fid(*a, *b)
    assert ours == pytest.approx(reference, rel=1e-6)
    assert frechet_distance(*b, *a) == pytest.approx(reference, rel=1e-6)  # symmetric


def test_fid_identical_inputs_is_zero():
    rng = np.random.default_rng(0)
    mu, sigma = _gaussian_stats(rng, 400, 64)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)


def test_fid_of_mean_shift_only():
    rng = np.random.default_rng(1)
    mu, sigma = _gaussian_stats(rng, 300, 16)
    assert frechet_distance(mu, sigma, mu + 0.5, sigma) == pytest.approx(16 * 0.25, rel=1e-9)


def test_fid_near_singular_covariances_are_real_and_finite():
    rng = np.random.default_rng(2)
    d = 64
    x, y = rng.standard_normal((20, d)), rng.standard_normal((30, d)) + 0.1  # rank 19 and 29 < d
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    s1[:, 0] = s1[0, :] = 0.0  # a dead feature
    value = frechet_distance(x.mean(0), s1, y.mean(0), s2)
    assert isinstance(value, float) and np.isfinite(value) and value > 0
    assert frechet_distance(np.zeros(d), np.zeros((d, d)), np.zeros(d), s2) == pytest.approx(np.trace(s2))


def test_fid_fast_and_pivoted_paths_agree():
    """Positive definite inputs take two Cholesky factors; singular ones the pivoted path."""
    from ganray.metrics import fid

    rng = np.random.default_rng(5)
    _, s1 = _gaussian_stats(rng, 400, 48)
    _, s2 = _gaussian_stats(rng, 400, 48, scale=1.3)
    fast = fid._trace_sqrt_definite(s1, s2)
    assert fast is not None and fast == pytest.approx(fid._trace_sqrt_pivoted(s1, s2), rel=1e-12)
    singular = np.cov(rng.standard_normal((20, 48)), rowvar=False)  # rank 19
    assert fid._trace_sqrt_definite(singular, s2) is None and fid._trace_sqrt_definite(s2, singular) is None
    ref = np.trace(scipy.linalg.sqrtm(singular @ s2)).real
    assert fid.trace_sqrt_product(s2, singular) == pytest.approx(ref, rel=1e-6)
    assert fid.trace_sqrt_product(singular, s2) == pytest.approx(ref, rel=1e-6)


def test_fid_rejects_bad_shapes_and_nan():
    with pytest.raises(ValueError, match="sigma2 has shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))
    with pytest.raises(ValueError, match="mu2 contains NaN"):
        frechet_distance(np.zeros(2), np.eye(2), np.array([0.0, np.nan]), np.eye(2))


def test_kid_identical_sets_near_zero_and_shifted_sets_positive():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((600, 16))
    mean, std = kid(x, x.copy(), num_subsets=20, subset_size=200)
    other_mean, _ = kid(x, rng.standard_normal((600, 16)) + 1.0, num_subsets=20, subset_size=200)
    assert abs(mean) < 0.05 and std > 0
    assert other_mean > 1.0
    assert other_mean > 50 * abs(mean)


def test_kid_unbiased_estimate_matches_formula():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((7, 3)), rng.standard_normal((7, 3))
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / 42
    yy = sum(k(y[i], y[j]) for i in range(7) for j in range(7) if i != j) / 42
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(7)) / 49
    assert mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kid_caps_subset_size_by_sample_count():
    rng = np.random.default_rng(5)
    mean, std = kid(rng.standard_normal((50, 4)), rng.standard_normal((40, 4)), num_subsets=5, subset_size=1000)
    assert np.isfinite(mean) and np.isfinite(std)


def test_precision_recall_identical_disjoint_and_partial():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(500, 8, generator=g)
    p, r = precision_recall(real, real.clone(), block=128)
    assert p == 1.0 and r == 1.0
    p, r = precision_recall(real, torch.randn(500, 8, generator=g) + 100.0, block=128)
    assert p == 0.0 and r == 0.0
    # Fakes that are one half of the real cloud: full precision; recall covers that half (the
    # points coincide) plus a boundary band of the other half, but clearly not everything.
    half = real[real[:, 0] > 0]
    p, r = precision_recall(real, half, block=100)
    assert p == 1.0
    assert len(half) / len(real) <= r < 0.9


def test_precision_recall_blocking_does_not_change_result():
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(300, 5, generator=g), torch.randn(250, 5, generator=g) * 1.3
    assert precision_recall(real, fake, block=7) == precision_recall(real, fake, block=4096)


def test_inception_score_bounds():
    k = 10
    confident_even = np.eye(k)[np.arange(1000) % k]
    uniform = np.full((1000, k), 1.0 / k)
    collapsed = np.eye(k)[np.zeros(1000, dtype=int)]
    assert inception_score(confident_even)[0] == pytest.approx(k, rel=1e-9)
    assert inception_score(uniform)[0] == pytest.approx(1.0, rel=1e-9)
    assert inception_score(collapsed)[0] == pytest.approx(1.0, rel=1e-9)
    mean, std = inception_score(np.random.default_rng(0).dirichlet(np.ones(k) * 0.3, 1000), splits=5)
    assert 1.0 < mean < k and std > 0


def test_mode_stats_entropy_and_count():
    k = 10
    even = np.eye(k)[np.arange(1000) % k]
    entropy, modes = mode_stats(even)
    assert entropy == pytest.approx(np.log(k)) and modes == k
    skewed = np.eye(k)[np.r_[np.zeros(900, int), np.arange(100) % 5 + 1]]  # class 0: 90%, 1..5: 2% each
    entropy, modes = mode_stats(skewed)
    assert modes == 1 and 0 < entropy < np.log(6)
