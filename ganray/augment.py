"""Differentiable augmentation for GAN training on few images.

DiffAugment (Zhao et al. 2020): the same kind of random, differentiable transform T is applied
to every image D sees, real and fake, in both the D and the G step, so G is trained through
D(T(G(z))) and never learns to produce augmented images. Adaptive augmentation (Karras et al.
2020, StyleGAN2-ADA) applies each op with probability p, steered by D's overfitting on reals.

Images are N x C x H x W in [-1, 1]; zero is mid-grey, so zero padding and cutout fill grey.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

OPS = ("color", "translation", "cutout")


def _device(x: Tensor, generator: torch.Generator | None) -> torch.device:
    # Draw on the generator's own device, so a CPU generator can drive CUDA images.
    return generator.device if generator is not None else x.device


def _uniform(x: Tensor, generator: torch.Generator | None, *shape: int) -> Tensor:
    u = torch.rand(*shape, generator=generator, device=_device(x, generator))
    return u.to(x.device, x.dtype)


def _randint(x: Tensor, generator: torch.Generator | None, low: int, high: int, n: int) -> Tensor:
    r = torch.randint(low, high, (n,), generator=generator, device=_device(x, generator))
    return r.to(x.device)


def _applied(x: Tensor, p: float, generator: torch.Generator | None) -> Tensor:
    """(N,) bool: which images this op transforms. Images left out get identity parameters."""
    if p >= 1.0:
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    return _uniform(x, generator, x.shape[0]) < p


def brightness(x: Tensor, p: float, generator: torch.Generator | None) -> Tensor:
    shift = (_uniform(x, generator, x.shape[0]) - 0.5) * _applied(x, p, generator)  # U[-0.5, 0.5)
    return x + shift[:, None, None, None]


def saturation(x: Tensor, p: float, generator: torch.Generator | None) -> Tensor:
    factor = _uniform(x, generator, x.shape[0]) * 2  # U[0, 2); a no-op on grayscale
    factor = torch.where(_applied(x, p, generator), factor, torch.ones_like(factor))
    mean = x.mean(dim=1, keepdim=True)  # N x 1 x H x W, per-pixel grey level
    return (x - mean) * factor[:, None, None, None] + mean


def contrast(x: Tensor, p: float, generator: torch.Generator | None) -> Tensor:
    factor = _uniform(x, generator, x.shape[0]) + 0.5  # U[0.5, 1.5)
    factor = torch.where(_applied(x, p, generator), factor, torch.ones_like(factor))
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # N x 1 x 1 x 1
    return (x - mean) * factor[:, None, None, None] + mean


def translation(x: Tensor, p: float, generator: torch.Generator | None, ratio: float = 0.125) -> Tensor:
    """Integer shift of up to ratio * size pixels per axis, zero (grey) fill."""
    N, _, H, W = x.shape
    sh, sw = int(H * ratio + 0.5), int(W * ratio + 0.5)
    keep = _applied(x, p, generator)
    dy = _randint(x, generator, -sh, sh + 1, N) * keep  # N, rows to move down
    dx = _randint(x, generator, -sw, sw + 1, N) * keep
    padded = F.pad(x, [sw, sw, sh, sh])  # N x C x (H + 2sh) x (W + 2sw)
    rows = torch.arange(H, device=x.device)[None, :] + sh - dy[:, None]  # N x H
    cols = torch.arange(W, device=x.device)[None, :] + sw - dx[:, None]  # N x W
    n = torch.arange(N, device=x.device)[:, None, None]
    # Advanced indexing puts the indexed dims first: N x H x W x C.
    out = padded.permute(0, 2, 3, 1)[n, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


def cutout(x: Tensor, p: float, generator: torch.Generator | None, ratio: float = 0.5) -> Tensor:
    """Grey out one (ratio * H) x (ratio * W) square per image, centred anywhere (clipped at edges)."""
    N, _, H, W = x.shape
    ch, cw = int(H * ratio + 0.5), int(W * ratio + 0.5)
    keep = _applied(x, p, generator)
    top = _randint(x, generator, 0, H, N) - ch // 2  # N
    left = _randint(x, generator, 0, W, N) - cw // 2
    y = torch.arange(H, device=x.device)[None, :]
    xs = torch.arange(W, device=x.device)[None, :]
    in_rows = (y >= top[:, None]) & (y < top[:, None] + ch)  # N x H
    in_cols = (xs >= left[:, None]) & (xs < left[:, None] + cw)  # N x W
    hole = in_rows[:, :, None] & in_cols[:, None, :] & keep[:, None, None]  # N x H x W
    return x * (~hole)[:, None].to(x.dtype)


_PRIMITIVES: dict[str, tuple[Callable[..., Tensor], ...]] = {
    "color": (brightness, saturation, contrast),
    "translation": (translation,),
    "cutout": (cutout,),
}


def parse_policy(policy: str) -> list[str]:
    ops = [op.strip() for op in policy.split(",") if op.strip()]
    bad = [op for op in ops if op not in OPS]
    if bad:
        raise ValueError(f"augment.policy: unknown DiffAugment op(s) {bad}; choose from {', '.join(OPS)}")
    return ops


def diff_augment(x: Tensor, policy: str, p: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Apply the policy's ops in order, each primitive to each image with probability p.

    policy: comma-separated subset of color,translation,cutout ("" is the identity);
    color is brightness, saturation and contrast, each drawn independently. Gradients flow to
    x. With the same generator state the output is the same; with generator=None the global
    torch RNG is used.
    """
    if not 0.0 <= p <= 1.0 or math.isnan(p):
        raise ValueError(f"diff_augment: p must be in [0, 1], got {p}")
    ops = parse_policy(policy)
    if x.dim() != 4:
        raise ValueError(f"diff_augment expects N x C x H x W images, got shape {tuple(x.shape)}")
    if p == 0.0:
        return x
    for op in ops:
        for fn in _PRIMITIVES[op]:
            x = fn(x, p, generator)
    return x


class AdaptiveAugment:
    """StyleGAN2-ADA's controller for the augmentation probability p.

    The overfitting heuristic r_t = E[sign(D(x_real))] over the real images seen since the last
    update (sum the signs and count the images on every worker, all-reduce both, divide). p moves
    by sign(r_t - target) * images / (speed_kimg * 1000), so at full speed it crosses [0, 1] in
    speed_kimg thousand images.
    """

    def __init__(self, target: float = 0.6, speed_kimg: float = 100.0, p: float = 0.0):
        if not 0.0 < target < 1.0:
            raise ValueError(f"augment.ada_target must be in (0, 1), got {target}")
        if speed_kimg <= 0:
            raise ValueError(f"augment.ada_speed_kimg must be > 0, got {speed_kimg}")
        self.target, self.speed_kimg = float(target), float(speed_kimg)
        self.p = min(max(float(p), 0.0), 1.0)

    def update(self, r_t: float, images_since_last: int) -> float:
        """Move p towards more augmentation when D overfits (r_t > target); returns the new p."""
        if images_since_last < 0:
            raise ValueError(f"images_since_last must be >= 0, got {images_since_last}")
        if not math.isfinite(r_t):
            return self.p  # a NaN r_t (no real logits seen) carries no signal
        direction = (r_t > self.target) - (r_t < self.target)  # sign(r_t - target)
        self.p += direction * images_since_last / (self.speed_kimg * 1000)
        self.p = min(max(self.p, 0.0), 1.0)
        return self.p

    def state_dict(self) -> dict[str, float]:
        return {"p": self.p, "target": self.target, "speed_kimg": self.speed_kimg}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restores p only: target and speed come from the (possibly changed) config."""
        if "p" not in state:
            raise ValueError("AdaptiveAugment state has no 'p'")
        self.p = min(max(float(state["p"]), 0.0), 1.0)
