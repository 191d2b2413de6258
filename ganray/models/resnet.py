"""SNGAN-style ResNet generator and discriminator for 32x32 images.

Miyato et al. 2018 ("Spectral Normalization for GANs", CIFAR-10 ResNet, appendix B.4):
G has three upsampling residual blocks, D four residual blocks (the first two downsample)
with global sum pooling. At the default width 64 the channel counts are the paper's
(G: 4 * width = 256, D: 2 * width = 128). Class conditioning: conditional BN in G
(embedding concatenated to z when norm="none"), projection in D (Miyato & Koyama 2018).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ganray.models.layers import (
    ConditionalBatchNorm2d,
    apply_norm,
    check_labels,
    make_g_norm,
    maybe_sn,
    raw_weight,
)


def _init_(module: nn.Module) -> None:
    """Xavier-uniform init as in the SNGAN code: gain sqrt(2) on the residual 3x3 convs, 1 elsewhere."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):
            nn.init.xavier_uniform_(raw_weight(m))
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, (GBlock, DBlock)):
            for conv in (m.conv1, m.conv2):
                nn.init.xavier_uniform_(raw_weight(conv), gain=math.sqrt(2))
        elif isinstance(m, ConditionalBatchNorm2d):
            m.reset_parameters()


def _conv3(c_in: int, c_out: int, sn: bool = False) -> nn.Module:
    return maybe_sn(nn.Conv2d(c_in, c_out, 3, 1, 1), sn)


class GBlock(nn.Module):
    """BN-ReLU-up-conv3-BN-ReLU-conv3 plus an upsampled 1x1 shortcut: C x H x W -> C' x 2H x 2W."""

    def __init__(self, c_in: int, c_out: int, norm: str, num_classes: int | None):
        super().__init__()
        self.norm1 = make_g_norm(norm, c_in, num_classes)
        self.conv1 = _conv3(c_in, c_out)
        self.norm2 = make_g_norm(norm, c_out, num_classes)
        self.conv2 = _conv3(c_out, c_out)
        self.shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        h = F.relu(apply_norm(self.norm1, x, labels))
        h = F.interpolate(h, scale_factor=2, mode="nearest")  # N x C x 2H x 2W
        h = self.conv1(h)
        h = self.conv2(F.relu(apply_norm(self.norm2, h, labels)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class ResNetGenerator(nn.Module):
    """z (N x latent_dim) -> N x channels x 32 x 32 in [-1, 1]; channels per block 4 * width."""

    resolution = 32

    def __init__(
        self,
        channels: int = 1,
        latent_dim: int = 128,
        width: int = 64,
        norm: str = "batch",
        num_classes: int | None = None,
    ):
        super().__init__()
        self.channels, self.latent_dim, self.num_classes = channels, latent_dim, num_classes
        self.ch = 4 * width
        concat = num_classes is not None and norm == "none"
        self.embed = nn.Embedding(num_classes, latent_dim) if concat else None
        self.fc = nn.Linear(latent_dim * (2 if concat else 1), self.ch * 16)
        self.blocks = nn.ModuleList(GBlock(self.ch, self.ch, norm, num_classes) for _ in range(3))
        # The last norm is unconditional in SNGAN's G.
        self.norm = make_g_norm(norm, self.ch, None)
        self.to_image = nn.Conv2d(self.ch, channels, 3, 1, 1)
        _init_(self)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        N = z.shape[0]
        if z.reshape(N, -1).shape[1] != self.latent_dim:
            raise ValueError(f"generator expects z of shape (N, {self.latent_dim}), got {tuple(z.shape)}")
        labels = check_labels(labels, self.num_classes, N, "generator")
        z = z.reshape(N, self.latent_dim)
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], dim=1)  # N x 2*latent_dim
        h = self.fc(z).view(N, self.ch, 4, 4)  # N x ch x 4 x 4
        for block in self.blocks:
            h = block(h, labels)  # 4 -> 8 -> 16 -> 32
        h = F.relu(self.norm(h))  # N x ch x 32 x 32
        return torch.tanh(self.to_image(h))  # N x channels x 32 x 32


class DBlock(nn.Module):
    """(BN)-ReLU-conv3-(BN)-ReLU-conv3 (+ avg-pool) plus a 1x1 shortcut.

    first=True is SNGAN's "optimized" first block: no ReLU on the raw image, and the
    shortcut pools before its 1x1 conv.
    """

    def __init__(self, c_in: int, c_out: int, down: bool, first: bool, norm: str, sn: bool):
        super().__init__()
        self.down, self.first = down, first
        bn = (lambda c: nn.BatchNorm2d(c)) if norm == "batch" else (lambda c: nn.Identity())
        self.norm1 = nn.Identity() if first else bn(c_in)
        self.conv1 = _conv3(c_in, c_out, sn)
        self.norm2 = bn(c_out)
        self.conv2 = _conv3(c_out, c_out, sn)
        self.shortcut = maybe_sn(nn.Conv2d(c_in, c_out, 1), sn) if (down or c_in != c_out) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.relu (not in-place): x is also the shortcut's input, and D runs twice per step.
        h = x if self.first else F.relu(self.norm1(x))
        h = self.conv2(F.relu(self.norm2(self.conv1(h))))
        if self.down:
            h = F.avg_pool2d(h, 2)  # N x C' x H/2 x W/2
        s = x
        if self.first:
            s = self.shortcut(F.avg_pool2d(s, 2))
        elif self.shortcut is not None:
            s = self.shortcut(s)
            s = F.avg_pool2d(s, 2) if self.down else s
        return h + s


class ResNetDiscriminator(nn.Module):
    """N x channels x 32 x 32 -> logits (N,); channels per block 2 * width."""

    resolution = 32

    def __init__(
        self,
        channels: int = 1,
        width: int = 64,
        norm: str = "none",
        spectral_norm: bool = True,
        num_classes: int | None = None,
    ):
        super().__init__()
        if norm not in ("batch", "none"):
            raise ValueError(f"unknown norm {norm!r}; choose 'batch' or 'none'")
        self.channels, self.num_classes = channels, num_classes
        ch = 2 * width
        sn = spectral_norm
        self.blocks = nn.Sequential(
            DBlock(channels, ch, down=True, first=True, norm=norm, sn=sn),  # ch x 16 x 16
            DBlock(ch, ch, down=True, first=False, norm=norm, sn=sn),  # ch x 8 x 8
            DBlock(ch, ch, down=False, first=False, norm=norm, sn=sn),  # ch x 8 x 8
            DBlock(ch, ch, down=False, first=False, norm=norm, sn=sn),  # ch x 8 x 8
        )
        self.fc = maybe_sn(nn.Linear(ch, 1), sn)
        self.embed = maybe_sn(nn.Embedding(num_classes, ch), sn) if num_classes is not None else None
        _init_(self)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.channels, 32, 32):
            raise ValueError(
                f"discriminator expects images N x {self.channels} x 32 x 32, got {tuple(x.shape)}"
            )
        labels = check_labels(labels, self.num_classes, x.shape[0], "discriminator")
        h = F.relu(self.blocks(x)).sum(dim=(2, 3))  # global sum pooling: N x ch
        logits = self.fc(h).squeeze(1)  # N
        if self.embed is not None:
            logits = logits + (self.embed(labels) * h).sum(dim=1)  # projection term
        return logits
