"""Generate images from a checkpoint: a PNG grid or a uint8 .npz array."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ganray.checkpoint import load_generator
from ganray.runfolder import image_grid, to_uint8


@torch.no_grad()
def generate(G, n: int, latent_dim: int, *, num_classes: int | None = None, label: int | None = None,
             seed: int = 0, batch_size: int = 500, device="cpu") -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 N x H x W x C images (and int64 labels for a conditional G)."""
    gen = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        z = torch.randn(b, latent_dim, generator=gen).to(device)
        y = None
        if num_classes:
            y = torch.full((b,), label) if label is not None else torch.arange(start, start + b) % num_classes
            labels.append(y.numpy())
            y = y.to(device)
        images.append(to_uint8(G(z, y)))
    return np.concatenate(images), (np.concatenate(labels).astype(np.int64) if labels else None)


def write_samples(checkpoint: str, out: str, *, n: int = 64, label: int | None = None, seed: int = 0) -> Path:
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    path = Path(out)
    if path.suffix not in (".png", ".npz"):
        raise ValueError(f"--out {out!r}: use a .png (grid) or .npz (array) file name")
    G, cfg = load_generator(checkpoint)
    num_classes = getattr(G, "num_classes", None) if cfg.model.conditional else None
    if label is not None:
        if not cfg.model.conditional:
            raise ValueError("--label needs a conditional generator (model.conditional=true)")
        if not 0 <= label < (num_classes or 0):
            raise ValueError(f"--label {label} is outside the generator's classes 0..{(num_classes or 1) - 1}")
    images, labels = generate(G, n, cfg.model.latent_dim, num_classes=num_classes, label=label, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        from PIL import Image

        # Conditional and no --label: one column per class (labels cycle 0..K-1 along each row).
        nrow = num_classes if num_classes and label is None else max(1, int(np.ceil(np.sqrt(n))))
        grid = image_grid(images, nrow=nrow)
        Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
    else:
        arrays = {"images": images} | ({"labels": labels} if labels is not None else {})
        np.savez_compressed(path, **arrays)
    return path
