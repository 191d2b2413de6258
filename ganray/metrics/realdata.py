"""The real images evaluation compares against, held in memory as uint8.

Read with ganray.data.load_arrays (the same decoding, resizing and fingerprint the training
pipeline uses, without Ray), so the real statistics describe exactly what G is trained to imitate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class RealData:
    pixels: np.ndarray  # uint8 N x H x W x C
    labels: np.ndarray | None  # int64 (N,), None when unlabelled
    fingerprint: str  # ganray.data's dataset fingerprint (content, resolution, channels)
    num_classes: int | None = None
    source: str = ""

    def __post_init__(self):
        if self.pixels.dtype != np.uint8 or self.pixels.ndim != 4:
            raise ValueError(f"real pixels must be uint8 N x H x W x C, got {self.pixels.dtype} {self.pixels.shape}")

    @property
    def resolution(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def channels(self) -> int:
        return int(self.pixels.shape[3])

    def __len__(self) -> int:
        return len(self.pixels)

    def images(self, index=None) -> torch.Tensor:
        """float32 N x C x H x W in [-1, 1] (x = u8 / 127.5 - 1), all rows or those in `index`."""
        u8 = self.pixels if index is None else self.pixels[np.asarray(index)]
        return torch.from_numpy(np.ascontiguousarray(u8)).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def label_tensor(self) -> torch.Tensor | None:
        return None if self.labels is None else torch.from_numpy(np.asarray(self.labels, np.int64))


class LazyRealData:
    """A RealData read on first use of its pixels or labels.

    Its identity (fingerprint, size, whether it has labels) comes from the training pipeline's
    DatasetInfo, so a run whose classifier and real statistics are cached never decodes the
    real images a second time on the driver.
    """

    def __init__(self, data_cfg, info):
        self.fingerprint, self.source = info.fingerprint, data_cfg.source
        self.resolution, self.channels = info.resolution, info.channels
        self.num_classes = info.num_classes
        self.has_labels = info.num_classes is not None
        self._cfg, self._real = data_cfg, None

    def load(self) -> RealData:
        if self._real is None:
            self._real = load_real_data(self._cfg)
            if self._real.fingerprint != self.fingerprint:
                from ganray.data import DataError

                raise DataError(f"data.source {self.source!r} changed while the run was starting")
        return self._real

    def __len__(self) -> int:
        return len(self.load())

    def __getattr__(self, name: str):  # pixels, labels, images(), label_tensor()
        if name.startswith("_"):  # never load for private or special names (copy, pickle)
            raise AttributeError(name)
        return getattr(self.load(), name)


def load_real_data(data_cfg, max_rows: int | None = None) -> RealData:
    """Up to max_rows images (a seeded random subset when the source is larger) and labels."""
    from ganray.data import load_arrays

    x, y, info = load_arrays(data_cfg, limit=max_rows)
    return RealData(x, y, info.fingerprint, info.num_classes if y is not None else None, data_cfg.source)
