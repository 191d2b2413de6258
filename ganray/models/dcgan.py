"""DCGAN generator and discriminator (Radford et al. 2016), on logits.

Class conditioning: G uses conditional BatchNorm (class gain/bias) when it has BatchNorm,
otherwise a label embedding concatenated to z; D is a projection discriminator
(Miyato & Koyama 2018): logit = psi(h) + <embed(y), h>.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ganray.models.layers import (
    apply_norm,
    check_labels,
    check_resolution,
    dcgan_init_,
    make_g_norm,
    maybe_sn,
)


class _UpBlock(nn.Module):
    """ConvTranspose2d(4, 2, 1) + (conditional) BN + ReLU: doubles the resolution."""

    def __init__(self, c_in: int, c_out: int, norm: str, num_classes: int | None):
        super().__init__()
        self.conv = nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=norm == "none")
        self.norm = make_g_norm(norm, c_out, num_classes)

    def forward(self, h: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return F.relu(apply_norm(self.norm, self.conv(h), labels))


class DCGANGenerator(nn.Module):
    """z (N x latent_dim) -> images N x channels x resolution x resolution in [-1, 1]."""

    def __init__(
        self,
        resolution: int = 32,
        channels: int = 1,
        latent_dim: int = 100,
        width: int = 64,
        norm: str = "batch",
        num_classes: int | None = None,
    ):
        super().__init__()
        n_up = check_resolution(resolution)
        self.resolution, self.channels, self.latent_dim = resolution, channels, latent_dim
        self.num_classes = num_classes
        self.top_channels = width * 2 ** (n_up - 1)  # channels at 4x4; halved by each block
        # Without BN there is nothing to condition, so the label joins z instead.
        concat = num_classes is not None and norm == "none"
        self.embed = nn.Embedding(num_classes, latent_dim) if concat else None
        in_dim = latent_dim * (2 if concat else 1)
        self.fc = nn.Linear(in_dim, self.top_channels * 16, bias=norm == "none")
        self.fc_norm = make_g_norm(norm, self.top_channels, num_classes)
        widths = [self.top_channels // 2**i for i in range(n_up)]  # e.g. 32px: [4w, 2w, w]
        self.blocks = nn.ModuleList(
            _UpBlock(c, c // 2, norm, num_classes) for c in widths[:-1]
        )
        self.to_image = nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1)
        dcgan_init_(self)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        N = z.shape[0]
        if z.reshape(N, -1).shape[1] != self.latent_dim:
            raise ValueError(f"generator expects z of shape (N, {self.latent_dim}), got {tuple(z.shape)}")
        labels = check_labels(labels, self.num_classes, N, "generator")
        z = z.reshape(N, self.latent_dim)
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], dim=1)  # N x 2*latent_dim
        h = self.fc(z).view(N, self.top_channels, 4, 4)  # N x top_channels x 4 x 4
        h = F.relu(apply_norm(self.fc_norm, h, labels))
        for block in self.blocks:
            h = block(h, labels)  # N x C/2 x 2H x 2W
        # 32px, width w: 4w x 4 x 4 -> 2w x 8 x 8 -> w x 16 x 16 -> channels x 32 x 32
        return torch.tanh(self.to_image(h))  # N x channels x resolution x resolution


class DCGANDiscriminator(nn.Module):
    """Images N x channels x resolution x resolution -> one logit per image, shape (N,)."""

    def __init__(
        self,
        resolution: int = 32,
        channels: int = 1,
        width: int = 64,
        norm: str = "batch",
        spectral_norm: bool = False,
        num_classes: int | None = None,
    ):
        super().__init__()
        n_down = check_resolution(resolution)
        if norm not in ("batch", "none"):
            raise ValueError(f"unknown norm {norm!r}; choose 'batch' or 'none'")
        self.resolution, self.channels, self.num_classes = resolution, channels, num_classes
        layers: list[nn.Module] = []
        c_in = channels
        for i in range(n_down):
            c_out = width * 2**i
            use_bn = norm == "batch" and i > 0  # DCGAN: no BN on D's first layer
            layers.append(maybe_sn(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not use_bn), spectral_norm))
            if use_bn:
                layers.append(nn.BatchNorm2d(c_out))
            # Not in-place: D runs on real then fake before one backward.
            layers.append(nn.LeakyReLU(0.2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        feature_dim = c_in * 16  # flattened 4x4 map
        self.fc = maybe_sn(nn.Linear(feature_dim, 1), spectral_norm)
        self.embed = None
        if num_classes is not None:
            self.embed = maybe_sn(nn.Embedding(num_classes, feature_dim), spectral_norm)
        dcgan_init_(self)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        expected = (self.channels, self.resolution, self.resolution)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"discriminator expects images N x {' x '.join(map(str, expected))}, "
                             f"got {tuple(x.shape)}")
        labels = check_labels(labels, self.num_classes, x.shape[0], "discriminator")
        # 32px, width w: channels x 32 x 32 -> w x 16 x 16 -> 2w x 8 x 8 -> 4w x 4 x 4
        h = self.features(x).flatten(1)  # N x (4*4*C_last)
        logits = self.fc(h).squeeze(1)  # N
        if self.embed is not None:
            logits = logits + (self.embed(labels) * h).sum(dim=1)  # projection term
        return logits
