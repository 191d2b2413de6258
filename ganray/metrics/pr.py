"""Improved precision and recall (Kynkaanniemi et al. 2019).

Each sample set defines a manifold: the union of balls around its points, each ball's radius
the distance to the point's k-th nearest neighbour within the same set (k = 3).
precision = share of generated points inside the real manifold (quality);
recall    = share of real points inside the generated manifold (coverage).
Distances are computed in row blocks, so 10k x 10k needs only block x n floats at a time.
"""

from __future__ import annotations

import torch


def _as_tensor(name: str, a) -> torch.Tensor:
    t = torch.as_tensor(a).detach()
    if t.ndim != 2 or t.shape[0] < 2:
        raise ValueError(f"{name} must be a 2-d array of at least 2 feature rows, got shape {tuple(t.shape)}")
    return t.to(torch.float32)


def _sq_dists(a: torch.Tensor, b: torch.Tensor, b_norms: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (len(a) x len(b)): |b|^2 - 2 a.b + |a|^2, clamped at 0."""
    d = torch.addmm(b_norms[None, :], a, b.T, alpha=-2.0)
    return d.add_((a * a).sum(1, keepdim=True)).clamp_min_(0.0)


def knn_radii(x: torch.Tensor, k: int = 3, block: int = 1024) -> torch.Tensor:
    """Squared distance from each row of x to its k-th nearest other row: shape (n,)."""
    if k >= len(x):
        raise ValueError(f"k={k} nearest neighbours need more than {k} points, got {len(x)}")
    norms = (x * x).sum(1)
    out = torch.empty(len(x), dtype=x.dtype, device=x.device)
    for i in range(0, len(x), block):
        d = _sq_dists(x[i : i + block], x, norms)
        # k + 1 smallest: the point itself is its own nearest neighbour at distance 0.
        # (topk is ~10x faster than kthvalue on CPU for small k.)
        out[i : i + block] = d.topk(k + 1, dim=1, largest=False).values[:, k]
    return out


def _coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block: int) -> float:
    """Share of `points` within radius of at least one centre."""
    inside, norms = 0, (centres * centres).sum(1)
    for i in range(0, len(points), block):
        d = _sq_dists(points[i : i + block], centres, norms)
        inside += int((d <= radii[None, :]).any(dim=1).sum())
    return inside / len(points)


def precision_recall(real, fake, *, k: int = 3, block: int = 1024) -> tuple[float, float]:
    """(precision, recall) of fake features against real features, both (n, d)."""
    x, y = _as_tensor("real features", real), _as_tensor("fake features", fake)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"real features have dimension {x.shape[1]}, fake features {y.shape[1]}")
    y = y.to(x.device)
    r_real, r_fake = knn_radii(x, k, block), knn_radii(y, k, block)
    return _coverage(y, x, r_real, block), _coverage(x, y, r_fake, block)
