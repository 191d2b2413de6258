"""ganray.backend: the torch.distributed set-up that keeps torch out of Ray Train's controller.

Its process group is exercised by every 2-worker test (test_distributed checks ranks, world
size and torchrun's variables); here: what the controller pays to unpickle it, and bad input.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cloudpickle
import pytest

REPO = Path(__file__).resolve().parents[1]

# What Ray Train's controller does with the backend config: unpickle it, build the backend,
# read the framework and its dict. Prints whether that imported torch.
_CONTROLLER = """
import sys, cloudpickle
cfg = cloudpickle.loads(bytes.fromhex(sys.argv[1]))
cfg.backend_cls(); cfg.framework; cfg.to_dict()
print("torch" in sys.modules)
"""


def _controller_imports_torch(cfg) -> bool:
    out = subprocess.run([sys.executable, "-c", _CONTROLLER, cloudpickle.dumps(cfg).hex()], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1] == "True"


def test_controller_does_not_import_torch():
    from ray.train.torch import TorchConfig

    from ganray.backend import ProcessGroupConfig

    assert _controller_imports_torch(TorchConfig(backend="gloo"))  # what this replaces
    assert not _controller_imports_torch(ProcessGroupConfig(backend="nccl"))


def test_same_contract_as_ray_torch_config():
    from ray.train.torch import TorchConfig

    from ganray.backend import ProcessGroupConfig

    ours, rays = ProcessGroupConfig(backend="nccl", timeout_s=60), TorchConfig(backend="nccl", timeout_s=60)
    assert ours.to_dict() == rays.to_dict()
    assert ours.framework == rays.framework
    ctx = ours.train_func_context()  # Ray's context manager, imported when a worker enters it
    with ctx:
        assert isinstance(ctx._inner, rays.train_func_context)
    assert ours.backend_cls.share_cuda_visible_devices == rays.backend_cls.share_cuda_visible_devices is True


def test_unknown_backend_is_named():
    from ganray.backend import ProcessGroupConfig

    with pytest.raises(ValueError, match=r"ProcessGroupConfig.backend must be one of \('gloo', 'nccl'\), got 'mpi'"):
        ProcessGroupConfig(backend="mpi")


class _Group:
    """A stand-in worker group that records what the backend asks the workers to run."""

    def __init__(self, n: int):
        self.n, self.calls = n, []

    def __len__(self):
        return self.n

    def execute_single(self, rank, fn, *args, **kwargs):
        self.calls.append((fn.__name__, rank))
        return "127.0.0.1", 29500

    def execute(self, fn, *args, **kwargs):
        self.calls.append((fn.__name__, "all"))

    def execute_single_async(self, rank, fn, *args, **kwargs):
        import ray

        self.calls.append((fn.__name__, rank))
        return ray.put(None)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_process_group_only_with_someone_to_talk_to(ray_session, workers):
    """torchrun's variables on every rank; a gloo group only at world size 2 and more (a group
    of one would run gloo's store and I/O thread for nothing; ganray.dist needs none)."""
    from ganray.backend import ProcessGroupConfig

    cfg = ProcessGroupConfig(backend="gloo")
    group = _Group(workers)
    cfg.backend_cls().on_start(group, cfg)
    assert ("_set_env", "all") in group.calls
    inits = [rank for name, rank in group.calls if name == "_init_process_group"]
    assert inits == ([] if workers == 1 else list(range(workers)))
