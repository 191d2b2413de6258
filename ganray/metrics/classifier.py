"""A small CNN classifier that ganray trains on the labelled real data, for evaluation.

Its 128-d penultimate layer gives FID/KID/PR features and its softmax the classifier score,
at the data's own resolution and channels: no 299 px Inception, no ImageNet weights, and
features that know what the classes look like. Stored as safetensors with metadata (dataset
fingerprint, resolution, channels, num_classes, held-out accuracy), so loading executes no code.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ganray.metrics.cachefiles import (  # noqa: F401 (default_classifier_path: re-exported)
    CLASSIFIER_FORMAT,
    ClassifierError,
    classifier_fingerprint,
    classifier_meta,
    default_classifier_path,
)


class Classifier(nn.Module):
    """x: N x C x R x R in [-1, 1], R in {16, 32, 64} -> logits N x num_classes."""

    def __init__(self, channels: int, num_classes: int, width: int = 32, feature_dim: int = 128):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(channels, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # w x R/2 x R/2
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 2w x R/4 x R/4
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),  # 4w x 4 x 4 whatever R is
            nn.Flatten(),
            nn.Linear(4 * w * 16, feature_dim), nn.ReLU(),  # feature_dim: the evaluation features
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(feature_dim, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@dataclass(frozen=True)
class ClassifierMeta:
    dataset_fingerprint: str
    resolution: int
    channels: int
    num_classes: int
    width: int
    feature_dim: int
    accuracy: float  # on the held-out split
    train_images: int
    heldout_images: int
    epochs: int
    fit_seconds: float

    def to_metadata(self) -> dict[str, str]:
        return {"format": CLASSIFIER_FORMAT, "meta": json.dumps(self.__dict__, sort_keys=True)}


def _shift(x: torch.Tensor, g: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translation by up to max_shift px (one offset per batch), background-filled."""
    dy, dx = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=g))
    p = max_shift
    padded = F.pad(x, (p, p, p, p), value=-1.0)
    h, w = x.shape[-2:]
    return padded[..., p + dy : p + dy + h, p + dx : p + dx + w]


@torch.no_grad()
def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    net.eval()
    correct = sum(int((net(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
                  for i in range(0, len(x), batch_size))
    return correct / max(1, len(x))


def fit_classifier(images: torch.Tensor, labels: torch.Tensor, *, dataset_fingerprint: str, epochs: int = 6,
                   heldout: int = 2000, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                   width: int = 32, log=None) -> tuple[Classifier, ClassifierMeta]:
    """Train on images (float N x C x R x R in [-1, 1]) and int labels; measure held-out accuracy.

    The held-out split is random (MNIST's test set has two writer populations in its halves);
    it takes `heldout` images, at most a fifth of the data.
    """
    x, y = torch.as_tensor(images, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.int64)
    if x.ndim != 4 or len(x) != len(y) or len(x) < 10:
        raise ClassifierError(f"need N x C x H x W images with N >= 10 matching labels, got {tuple(x.shape)}, {tuple(y.shape)}")
    if int(y.min()) < 0:
        raise ClassifierError("the classifier needs labelled data; found negative (missing) labels")
    num_classes = int(y.max()) + 1
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    n_val = min(heldout, len(x) // 5)
    val, train = perm[:n_val], perm[n_val:]
    net = Classifier(x.shape[1], num_classes, width=width)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * ((len(train) + batch_size - 1) // batch_size)
    # Cosine decay to zero: the last epochs refine at a small step size (+~0.5 pt accuracy).
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        order = train[torch.randperm(len(train), generator=g)]
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(net(_shift(x[idx], g)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if log is not None:
            log(f"classifier epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}")
    acc = accuracy(net, x[val], y[val])
    meta = ClassifierMeta(dataset_fingerprint, int(x.shape[-1]), int(x.shape[1]), num_classes, width,
                          net.head[1].in_features,
                          round(acc, 6), len(train), n_val, epochs, round(time.perf_counter() - t0, 2))
    return net.eval(), meta


def save_classifier(path: str | Path, net: Classifier, meta: ClassifierMeta) -> Path:
    """Write safetensors weights plus metadata atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(tensors, str(tmp), metadata=meta.to_metadata())
    os.replace(tmp, path)
    return path


def load_classifier(path: str | Path) -> tuple[Classifier, ClassifierMeta, str]:
    """(net in eval mode, metadata, fingerprint of the file's bytes)."""
    path = Path(path)
    if not path.is_file():
        raise ClassifierError(f"classifier file {path} does not exist (make one with `ganray evaluator fit --data SOURCE`)")
    return classifier_from_bytes(path.read_bytes(), str(path))


def classifier_from_bytes(data: bytes, name: str = "<bytes>") -> tuple[Classifier, ClassifierMeta, str]:
    """As load_classifier, from the file's contents (shipped to workers that lack the file)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        state = load(data)
    except (SafetensorError, ValueError, OSError) as e:
        raise ClassifierError(f"cannot read classifier {name}: {e}") from None
    meta = ClassifierMeta(**classifier_meta(data, name))
    net = Classifier(meta.channels, meta.num_classes, width=meta.width, feature_dim=meta.feature_dim)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise ClassifierError(f"classifier {name} does not match its metadata: {e}") from None
    return net.eval(), meta, classifier_fingerprint(data)


def as_float_images(images) -> torch.Tensor:
    """uint8 N x H x W x C or float N x C x H x W in [-1, 1] -> float32 N x C x H x W in [-1, 1]."""
    a = images
    if isinstance(a, np.ndarray) and a.dtype == np.uint8:
        return torch.from_numpy(a).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    return torch.as_tensor(a, dtype=torch.float32)
