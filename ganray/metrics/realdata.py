"""The real images evaluation compares against, as in-memory tensors.

Read through ganray.data's own pipeline (the same decoding, resizing and fingerprint the
training data gets), so the real statistics describe exactly what G is trained to imitate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class RealData:
    images: torch.Tensor  # float32 N x C x H x W in [-1, 1]
    labels: torch.Tensor | None  # int64 (N,), None when unlabelled
    fingerprint: str  # ganray.data's dataset fingerprint (content, resolution, channels)
    num_classes: int | None
    source: str = ""

    @property
    def resolution(self) -> int:
        return int(self.images.shape[-1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return len(self.images)


def load_real_data(data_cfg, max_rows: int | None = None, batch_size: int = 1024) -> RealData:
    """Up to max_rows images (and labels) of data_cfg's source, through ganray.data.

    Starts a local Ray when none is running (Ray Data reads the source).
    """
    from ganray.data import load_dataset

    ds, info = load_dataset(data_cfg)
    if max_rows is not None and max_rows < info.num_rows:
        ds = ds.limit(max_rows)
    images, labels = [], []
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
        images.append(np.asarray(batch["image"], np.float32))
        if "label" in batch:
            labels.append(np.asarray(batch["label"], np.int64))
    if not images:
        raise ValueError(f"data {data_cfg.source!r} yielded no images")
    x = torch.from_numpy(np.concatenate(images))
    y = torch.from_numpy(np.concatenate(labels)) if info.num_classes and labels else None
    return RealData(x, y, info.fingerprint, info.num_classes if y is not None else None, data_cfg.source)
