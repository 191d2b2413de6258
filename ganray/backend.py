"""torch.distributed set-up for Ray Train that leaves torch out of Ray Train's controller.

Ray's `TorchConfig` lives in a module that imports torch at the top, and Ray Train's controller
unpickles the backend config before it starts a single worker: every run paid a torch import
(1.3 s on the 2-core benchmark machine) on its start-up's critical path, in a process that
never touches a tensor. `ProcessGroupConfig` does what `TorchConfig(init_method="env")` does for
ganray (the backend, the rendezvous, the torch.distributed environment variables, the
shutdown; the CUDA device through Ray's own context manager), and only the functions it runs on
the workers import torch. One difference: a run of one worker gets torchrun's variables but no
process group (`ganray.dist` needs none at world size 1).

It implements Ray Train's documented `Backend`/`BackendConfig` interface; the worker-group
calls (`execute`, `execute_single`, `execute_single_async`, `execute_async`) are the ones Ray's
own backends use.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import ray
from ray.exceptions import GetTimeoutError
from ray.train.backend import Backend, BackendConfig
from ray.train.constants import DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S, TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S

logger = logging.getLogger(__name__)

BACKENDS = ("gloo", "nccl")


@dataclass
class ProcessGroupConfig(BackendConfig):
    """`backend`: "gloo" (CPU) or "nccl" (one GPU per worker); `timeout_s`: collective timeout."""

    backend: str = "gloo"
    timeout_s: int = 1800

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"ProcessGroupConfig.backend must be one of {BACKENDS}, got {self.backend!r}")

    @property
    def backend_cls(self):
        return _ProcessGroupBackend

    @property
    def train_func_context(self):
        # Read on the driver, where the training function is wrapped: a class whose module is
        # torch-free (see _DeviceContext).
        return _DeviceContext

    @property
    def framework(self):
        from ray.train.v2._internal.util import TrainingFramework

        return TrainingFramework.TORCH

    def to_dict(self) -> dict:
        return {"backend": self.backend, "init_method": "env", "timeout_s": self.timeout_s}


class _DeviceContext:
    """Ray's `TorchConfigContextManager` (it makes the worker's GPU the current device), imported
    when the worker enters it: its module imports torch, which the driver does not need."""

    def __enter__(self):
        from ray.train.torch.config import TorchConfigContextManager

        self._inner = TorchConfigContextManager()
        return self._inner.__enter__()

    def __exit__(self, *exc):
        return self._inner.__exit__(*exc)


class _ProcessGroupBackend(Backend):
    # Workers on one node see all of that node's GPUs that the run holds (as Ray's torch backend).
    share_cuda_visible_devices: bool = True

    def on_start(self, worker_group, backend_config: ProcessGroupConfig):
        from ray.train._internal.utils import get_address_and_port

        addr, port = worker_group.execute_single(0, get_address_and_port)
        worker_group.execute(_set_env, addr=addr, port=port, backend=backend_config.backend)
        world = len(worker_group)
        if world == 1:
            # Nobody to talk to: ganray.dist runs without a group at world size 1, and a group
            # of one would keep gloo's TCP store and I/O thread busy beside the training threads.
            return
        ray.get([
            worker_group.execute_single_async(i, _init_process_group, backend=backend_config.backend,
                                              world_rank=i, world_size=world, timeout_s=backend_config.timeout_s)
            for i in range(world)
        ])

    def on_shutdown(self, worker_group, backend_config: ProcessGroupConfig):
        futures = worker_group.execute_async(_shut_down)
        timeout_s = float(os.environ.get(TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
                                         DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S))
        try:
            ray.get(futures, timeout=timeout_s)
        except GetTimeoutError:
            logger.warning("torch process group shutdown timed out after %.0f s", timeout_s)


def _set_env(addr: str, port: int, backend: str) -> None:
    """The variables torchrun sets (init_method env:// reads MASTER_*, RANK, WORLD_SIZE)."""
    import ray.train

    ctx = ray.train.get_context()
    os.environ.update({
        "MASTER_ADDR": addr,
        "MASTER_PORT": str(port),
        "RANK": str(ctx.get_world_rank()),
        "WORLD_SIZE": str(ctx.get_world_size()),
        "LOCAL_RANK": str(ctx.get_local_rank()),
        "LOCAL_WORLD_SIZE": str(ctx.get_local_world_size()),
        "NODE_RANK": str(ctx.get_node_rank()),
    })
    if backend == "nccl" and not ({"TORCH_NCCL_ASYNC_ERROR_HANDLING", "TORCH_NCCL_BLOCKING_WAIT"} & set(os.environ)):
        # A timed-out NCCL collective fails the worker instead of hanging it.
        os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "1"


def _init_process_group(backend: str, world_rank: int, world_size: int, timeout_s: int) -> None:
    import torch.distributed as dist

    dist.init_process_group(backend=backend, init_method="env://", rank=world_rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))


def _shut_down() -> None:
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
