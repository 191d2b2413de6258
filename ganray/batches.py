"""A worker's real batches: endless, reshuffled every epoch with seeds from the run seed.

A cached split (CachedRows or a MaterializedDataset) is read once and permuted in memory every
epoch; a streaming shard is shuffled in chunks of data.shuffle_buffer_rows rows. Both skip the
batches a resumed run has already consumed.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch

from ganray.config import Config
from ganray.data import read_cached


def seed_for(seed: int, rank: int, step: int, stream: int = 0) -> int:
    # Distinct, reproducible streams per (seed, rank, step): a resumed run draws the same noise.
    return (seed * 1_000_003 + rank * 7_919 + step * 104_729 + stream * 15_485_863) % (2**63 - 1)


def worker_batches(shard, cfg: Config, rank: int, device: torch.device, *, rows_per_rank: int,
                   consumed: int = 0, in_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (real, labels) batches; each epoch reshuffled with a seed from the run seed
    (data.shuffle_buffer_rows=0: no shuffling).

    `in_memory` (a cached dataset's fixed split): the worker reads its split once (`read_split`)
    and every epoch is a full seeded permutation of it, so an epoch costs one randperm and
    an index_select per batch instead of a Ray Data iteration (BENCHMARKS.md, ingest). Streaming
    data: Ray Data hands over chunks of data.shuffle_buffer_rows rows (rounded up to whole
    batches), each cut into batches in a seeded random order: a local shuffle like Ray's
    `local_shuffle_buffer_size`, at a quarter of its CPU per batch. A chunk's (or split's) last
    partial batch is dropped.

    `consumed` batches are skipped first, so a resumed run continues mid-epoch exactly where
    the interrupted one stopped: bit-exact with a cached dataset, whose splits the driver fixes;
    a streaming dataset's blocks go to workers dynamically, so with several workers the split
    itself can differ between runs.
    """
    if in_memory:
        yield from _in_memory_batches(*read_split(shard, device), cfg, rank, device, consumed)
        return
    B = cfg.train.batch_size_per_worker
    per_epoch = max(rows_per_rank // B, 1)
    epoch, skip = divmod(consumed, per_epoch)
    shuffle = cfg.data.shuffle_buffer_rows > 0
    chunk = max(1, math.ceil(cfg.data.shuffle_buffer_rows / B)) * B
    while True:
        gen = torch.Generator().manual_seed(seed_for(cfg.train.seed, rank, epoch, stream=1))
        got = False
        for part in shard.iter_torch_batches(batch_size=chunk, prefetch_batches=1, device=device,
                                             pin_memory=device.type == "cuda"):
            image, label = part["image"], part["label"]  # n x C x H x W, (n,); n <= chunk
            n = len(image) - len(image) % B
            order = torch.randperm(len(image), generator=gen)[:n] if shuffle else torch.arange(n)
            if device.type == "cuda":
                order = order.pin_memory().to(device, non_blocking=True)  # no host sync
            for i in range(0, n, B):
                got = True
                if skip:
                    skip -= 1
                    continue
                idx = order[i : i + B]
                yield image.index_select(0, idx), label.index_select(0, idx)
        if not got:
            _no_full_batch(rank, B)
        epoch += 1


def _no_full_batch(rank: int, B: int):
    raise RuntimeError(f"worker {rank} received no full batch of {B} images: "
                       "the dataset is smaller than workers x batch_size_per_worker")


def read_split(shard, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A cached split (at most data.pipeline.FLOAT_CACHE_MAX_BYTES / workers), read once into
    one image and one label tensor on `device` (the GPU's memory when training on one: no
    host-to-device copy per step)."""
    image, label = read_cached(shard)
    return torch.from_numpy(image).to(device), torch.from_numpy(label).to(device)


def _in_memory_batches(image: torch.Tensor, label: torch.Tensor, cfg: Config, rank: int, device: torch.device,
                       consumed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    B = cfg.train.batch_size_per_worker
    per_epoch = len(image) // B
    if per_epoch == 0:
        _no_full_batch(rank, B)
    epoch, skip = divmod(consumed, per_epoch)
    shuffle = cfg.data.shuffle_buffer_rows > 0
    while True:
        gen = torch.Generator().manual_seed(seed_for(cfg.train.seed, rank, epoch, stream=1))
        order = torch.randperm(len(image), generator=gen) if shuffle else torch.arange(len(image))
        if device.type == "cuda":
            order = order.pin_memory().to(device, non_blocking=True)  # no host sync
        for i in range(skip * B, per_epoch * B, B):
            idx = order[i : i + B]
            yield image.index_select(0, idx), label.index_select(0, idx)
        skip = 0
        epoch += 1
