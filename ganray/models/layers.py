"""Building blocks shared by the DCGAN and ResNet networks.

Pure torch: nothing here knows about devices, DDP, Ray or the config.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm


def maybe_sn(module: nn.Module, enabled: bool) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018) of ``module.weight`` when ``enabled``.

    Uses the parametrization API: u/v are cloned before sigma is computed, so D may be
    called several times (real, then fake) before one backward.
    """
    return spectral_norm(module) if enabled else module


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm without its own affine, then a per-class gain and bias.

    De Vries et al. 2017; used for class-conditional G by Miyato & Koyama 2018. The inner
    nn.BatchNorm2d is a plain BatchNorm, so SyncBatchNorm conversion still finds it.
    """

    def __init__(self, num_features: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, affine=False)
        self.gain = nn.Embedding(num_classes, num_features)
        self.bias = nn.Embedding(num_classes, num_features)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Start as the identity affine (gain 1, bias 0), DCGAN-style jitter on the gain.
        nn.init.normal_(self.gain.weight, 1.0, 0.02)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.bn(x)  # N x C x H x W
        gain = self.gain(labels)[:, :, None, None]  # N x C x 1 x 1
        bias = self.bias(labels)[:, :, None, None]
        return h * gain + bias


def make_g_norm(norm: str, num_features: int, num_classes: int | None) -> nn.Module:
    """G's normalisation layer: conditional BN when conditional, else BN or identity."""
    if norm == "batch":
        if num_classes is not None:
            return ConditionalBatchNorm2d(num_features, num_classes)
        return nn.BatchNorm2d(num_features)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; choose 'batch' or 'none'")


def apply_norm(layer: nn.Module, h: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    if isinstance(layer, ConditionalBatchNorm2d):
        return layer(h, labels)
    return layer(h)


def check_labels(
    labels: torch.Tensor | None, num_classes: int | None, batch: int, who: str
) -> torch.Tensor | None:
    """Conditional networks need int64 labels (N,) in [0, num_classes); others ignore them."""
    if num_classes is None:
        return None
    if labels is None:
        raise ValueError(f"conditional {who} needs labels (int64 tensor of shape (N,))")
    if labels.shape != (batch,):
        raise ValueError(f"{who} labels must have shape ({batch},), got {tuple(labels.shape)}")
    return labels.long()


def raw_weight(m: nn.Module) -> torch.Tensor:
    """The stored weight: under spectral norm ``m.weight`` is recomputed on every access."""
    if parametrize.is_parametrized(m, "weight"):
        return m.parametrizations.weight.original
    return m.weight


def dcgan_init_(module: nn.Module) -> None:
    """DCGAN init (Radford et al. 2016): weights N(0, 0.02), BN weight N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
            nn.init.normal_(raw_weight(m), 0.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    # The loop above also hit the conditional-BN embeddings; put their identity start back.
    for m in module.modules():
        if isinstance(m, ConditionalBatchNorm2d):
            m.reset_parameters()


def check_resolution(resolution: int) -> int:
    """Number of x2 stages between 4x4 and ``resolution``."""
    if resolution not in (16, 32, 64):
        raise ValueError(f"resolution must be 16, 32 or 64, got {resolution}")
    return {16: 2, 32: 3, 64: 4}[resolution]
