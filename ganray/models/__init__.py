"""Generator and discriminator builders from the typed config.

The networks themselves (dcgan.py, resnet.py) are plain nn.Modules that know nothing of the
config, devices, DDP or Ray; this module is the only place that reads ModelConfig/DataConfig.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from ganray.models.dcgan import DCGANDiscriminator, DCGANGenerator
from ganray.models.resnet import ResNetDiscriminator, ResNetGenerator

if TYPE_CHECKING:
    from ganray.config import DataConfig, ModelConfig

__all__ = [
    "DCGANDiscriminator",
    "DCGANGenerator",
    "ResNetDiscriminator",
    "ResNetGenerator",
    "build_discriminator",
    "build_generator",
    "count_params",
]


def _classes(model_cfg: ModelConfig, num_classes: int | None) -> int | None:
    """num_classes for a conditional model, None for an unconditional one."""
    if not model_cfg.conditional:
        return None
    if num_classes is None:
        raise ValueError(
            "model.conditional=true needs class labels, but the number of classes is unknown: "
            "set data.num_classes or use a labelled data source"
        )
    if num_classes < 1:
        raise ValueError(f"model.conditional=true needs num_classes >= 1, got {num_classes}")
    return int(num_classes)


def _check_arch(model_cfg: ModelConfig, data_cfg: DataConfig) -> None:
    if model_cfg.arch not in ("dcgan", "resnet"):
        raise ValueError(f"unknown model.arch {model_cfg.arch!r}; choose 'dcgan' or 'resnet'")
    if model_cfg.arch == "resnet" and data_cfg.resolution != 32:
        raise ValueError(f"model.arch=resnet supports data.resolution=32 only, got {data_cfg.resolution}")


def build_generator(model_cfg: ModelConfig, data_cfg: DataConfig, num_classes: int | None) -> nn.Module:
    """G(z, labels=None) -> N x data.channels x data.resolution^2 in [-1, 1]."""
    _check_arch(model_cfg, data_cfg)
    classes = _classes(model_cfg, num_classes)
    if model_cfg.arch == "resnet":
        return ResNetGenerator(
            channels=data_cfg.channels,
            latent_dim=model_cfg.latent_dim,
            width=model_cfg.g_width,
            norm=model_cfg.g_norm,
            num_classes=classes,
        )
    return DCGANGenerator(
        resolution=data_cfg.resolution,
        channels=data_cfg.channels,
        latent_dim=model_cfg.latent_dim,
        width=model_cfg.g_width,
        norm=model_cfg.g_norm,
        num_classes=classes,
    )


def build_discriminator(model_cfg: ModelConfig, data_cfg: DataConfig, num_classes: int | None) -> nn.Module:
    """D(x, labels=None) -> logits of shape (N,)."""
    _check_arch(model_cfg, data_cfg)
    classes = _classes(model_cfg, num_classes)
    if model_cfg.arch == "resnet":
        return ResNetDiscriminator(
            channels=data_cfg.channels,
            width=model_cfg.d_width,
            norm=model_cfg.d_norm,
            spectral_norm=model_cfg.spectral_norm,
            num_classes=classes,
        )
    return DCGANDiscriminator(
        resolution=data_cfg.resolution,
        channels=data_cfg.channels,
        width=model_cfg.d_width,
        norm=model_cfg.d_norm,
        spectral_norm=model_cfg.spectral_norm,
        num_classes=classes,
    )


def count_params(module: nn.Module) -> int:
    """Number of parameters (spectral-norm u/v vectors are buffers and not counted)."""
    return sum(p.numel() for p in module.parameters())
