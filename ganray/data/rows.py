"""CachedRows: training rows held in Ray's object store in blocks, split by row range.

In-memory array sources (IDX, .npz, the built-in digits) whose float rows fit the cache take
this path instead of Ray Data: the driver already holds the arrays, resizes and scales them in
blocks and puts each block in the object store once. A worker fetches only the blocks its row
range overlaps. Ray Data would add its executor, its stats and autoscaling-coordinator actors
and task worker processes, which cost start-up time and, idle beside training, CPU, for data
that needs none of its streaming (BENCHMARKS.md measures both).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterable

import numpy as np


@dataclass(frozen=True)
class CachedRows:
    blocks: tuple[Any, ...]  # ObjectRefs of {"image": float32 n x C x H x W, "label": int64 (n,)}
    counts: tuple[int, ...]  # rows per block
    start: int = 0  # this view's rows: [start, stop) of the blocks' concatenation
    stop: int | None = None

    def __len__(self) -> int:
        return (sum(self.counts) if self.stop is None else self.stop) - self.start

    def split(self, n: int) -> list[CachedRows]:
        """`n` equal, disjoint, contiguous parts; the last len % n rows are left out, as in Ray
        Data's split(equal=True). Nothing is fetched or copied."""
        size = len(self) // n
        return [replace(self, start=self.start + i * size, stop=self.start + (i + 1) * size) for i in range(n)]

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """(image, label) of this view's rows, in order, from the blocks it overlaps."""
        import ray

        n = len(self)
        bounds = np.concatenate([[0], np.cumsum(self.counts, dtype=np.int64)])
        first = int(np.searchsorted(bounds, self.start, side="right")) - 1
        last = int(np.searchsorted(bounds, self.start + n, side="left"))
        parts = ray.get(list(self.blocks[first:max(last, first + 1)]))
        offset = self.start - int(bounds[first])
        image = np.concatenate([p["image"] for p in parts])[offset : offset + n]
        label = np.concatenate([p["label"] for p in parts])[offset : offset + n]
        return image, label


def cache_rows(blocks: Iterable[tuple[np.ndarray, np.ndarray]]) -> CachedRows:
    """Put (image, label) blocks in Ray's object store, owned by the calling process."""
    import ray

    refs, counts = [], []
    for image, label in blocks:
        if len(image) != len(label):
            raise ValueError(f"a block has {len(image)} images and {len(label)} labels")
        refs.append(ray.put({"image": image, "label": label}))
        counts.append(len(label))
    return CachedRows(tuple(refs), tuple(counts))
