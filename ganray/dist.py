"""Rank, world size and collectives; the only importer of torch.distributed.

Every function works without a process group (world size 1), so the same code path
runs in unit tests, in a single worker and in N data-parallel workers. A process group of
one (Ray Train starts one for a single worker too) counts as none: no DDP wrapper, whose
gradient hooks, buckets and one-rank all-reduces would cost time and change nothing.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as torch_dist
from torch import nn


def is_distributed() -> bool:
    """A process group of two or more ranks is up."""
    return torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1


def rank() -> int:
    return torch_dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return torch_dist.get_world_size() if is_distributed() else 1


def barrier() -> None:
    if is_distributed():
        torch_dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over ranks in place and return it."""
    if is_distributed():
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    all_reduce_sum(t)
    if is_distributed():
        t /= world_size()
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
    return t


def broadcast(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    if is_distributed():
        torch_dist.broadcast(t, src=src)
    return t


def broadcast_object(obj, src: int = 0):
    if not is_distributed():
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=src)
    return box[0]


def average_buffers(module: nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over ranks.

    Without SyncBatchNorm each rank's running mean/var see only its own data; averaging
    them makes sampling, evaluation and checkpoints identical on every rank.
    Integer buffers (num_batches_tracked) are identical already and left alone.
    """
    if not is_distributed():
        return
    for buf in module.buffers():
        if buf.is_floating_point():
            all_reduce_mean(buf.data)


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Make parameters and buffers of `module` equal to rank `src`'s."""
    if not is_distributed():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        broadcast(t.data, src=src)


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """Wrap one network for data parallelism, or return it unchanged at world size 1.

    No buffer sync in forward: a BatchNorm network called twice per step (D on real, then on
    fake) would otherwise have its buffers overwritten in place between the two forward
    passes ("modified by an inplace operation"); running statistics are averaged explicitly
    with `average_buffers` instead. torch 2.13 renamed the switch (`broadcast_buffers` ->
    `forward_sync_buffers`, which also syncs buffers once at wrap time: harmless, every rank
    holds the same ones then) and warns on the old name; older releases know only the old one.
    """
    if not is_distributed():
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    device_ids = [device.index] if device.type == "cuda" else None
    no_forward_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in _ddp_parameters()
                       else {"broadcast_buffers": False})
    return DDP(module, device_ids=device_ids, **no_forward_sync)


@functools.cache
def _ddp_parameters() -> frozenset[str]:
    import inspect

    from torch.nn.parallel import DistributedDataParallel as DDP

    return frozenset(inspect.signature(DDP.__init__).parameters)


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if hasattr(module, "module") and isinstance(module.module, nn.Module) else module
