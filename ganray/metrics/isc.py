"""Scores from a classifier's softmax over generated samples.

inception_score: exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016); high when each sample is
    confidently one class and the classes are evenly used. With ganray's own classifier this is
    the "classifier score" (max = number of classes), not comparable to ImageNet IS numbers.
mode_stats: entropy (nats) of the histogram of predicted classes, and how many classes hold at
    least 5% of the samples: a direct mode-collapse signal (log K and K for full coverage).
"""

from __future__ import annotations

import numpy as np


def _as_probs(probs) -> np.ndarray:
    p = np.asarray(probs.detach().cpu() if hasattr(probs, "detach") else probs, dtype=np.float64)
    if p.ndim != 2 or len(p) == 0:
        raise ValueError(f"class probabilities must be a non-empty N x K array, got shape {p.shape}")
    return p


def inception_score(probs, splits: int = 10) -> tuple[float, float]:
    """(mean, std) over `splits` consecutive parts of probs (N x K softmax rows)."""
    p = _as_probs(probs)
    splits = max(1, min(splits, len(p)))
    scores = []
    for part in np.array_split(p, splits):
        p_y = part.mean(axis=0, keepdims=True)
        # 0 * log 0 = 0: the tiny floor only guards the log, it does not change nonzero terms.
        kl = (part * (np.log(np.maximum(part, 1e-30)) - np.log(np.maximum(p_y, 1e-30)))).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def mode_stats(probs, min_share: float = 0.05) -> tuple[float, int]:
    """(entropy in nats of the predicted-class histogram, classes holding >= min_share)."""
    p = _as_probs(probs)
    share = np.bincount(p.argmax(axis=1), minlength=p.shape[1]) / len(p)
    nz = share[share > 0]
    return float(-(nz * np.log(nz)).sum()), int((share >= min_share).sum())
