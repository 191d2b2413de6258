"""The Ray Train trainer ganray runs: Ray's data-parallel trainer with ganray's process-group
backend, no torch on the driver, no dataset manager for a run without Ray datasets, and no
placement-group cleaner on a Ray instance the run owns.

- **No torch on the driver.** Ray's `TorchTrainer` only fills in a default `TorchConfig`, but its
  package (`ray.train.torch`) imports torch, and so does `TorchConfig`'s module. A driver that
  builds one pays a torch import (about 1.2 s on the 2-core benchmark machine) before any
  worker starts: every `ganray train` and every Tune trial. `GanTrainer` is Ray's
  `DataParallelTrainer` (the base `TorchTrainer` extends; a Ray developer API) with
  `ganray.backend.ProcessGroupConfig`, and the training function is `train_worker` below,
  which imports ganray's training loop (and torch) on the worker only.
- **No dataset manager without datasets.** Ray Train V2 starts a `DatasetManager` actor for
  every run, datasets or not, and at worker start runs a task on each worker to hand it Ray
  Data's context. ganray gives cached data (the default) to the workers as fixed splits in the
  loop config (`launch.worker_splits`), so that actor and that round trip serve nothing: one
  more Python process for the whole run (197 MiB resident and 0.5-0.7% of a core while idle,
  measured on the benchmark machine; Ray's task loop wakes 100 times a second). With Ray
  datasets (streaming sources) the callbacks are Ray's unchanged.
- **No placement-group cleaner on a Ray instance the run owns** (`placement_group_cleaner=False`,
  which `ganray train` passes when it started the local instance itself). Ray Train V2 starts a
  detached cleaner actor per run, which removes the run's placement group should the controller
  die without doing so. When the instance ends with the command, nothing can outlive it, and
  the actor would be one more process starting beside the training worker (Ray starts at most
  as many worker processes at once as there are cores) and waking 100 times a second all run.
  `_create_default_callbacks` is not public API; ganray pins Ray to 2.60.x, where it is the
  method `fit()` calls for its callback list. `tests/test_trainer.py` pins that behaviour.
"""

from __future__ import annotations

from typing import Any

from ray.train.v2._internal.callbacks import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

from ganray.backend import ProcessGroupConfig


def train_worker(loop_config: dict[str, Any]) -> None:
    """The function every Ray Train worker runs: ganray's training loop, imported there."""
    from ganray.train_loop import train_worker as run

    run(loop_config)


class GanTrainer(DataParallelTrainer):
    def __init__(self, train_loop_per_worker=train_worker, *, backend_config: ProcessGroupConfig | None = None,
                 placement_group_cleaner: bool = True, **kwargs):
        backend_config = backend_config or ProcessGroupConfig()
        if not isinstance(backend_config, ProcessGroupConfig):
            raise TypeError(f"GanTrainer runs ganray.backend.ProcessGroupConfig, got {type(backend_config).__name__}")
        if kwargs.get("scaling_config") is not None and kwargs["scaling_config"].num_workers == 0:
            # Ray's local mode (no worker processes) needs TorchTrainer's torch controller.
            raise ValueError("GanTrainer needs scaling_config.num_workers >= 1")
        self._placement_group_cleaner = placement_group_cleaner
        super().__init__(train_loop_per_worker, backend_config=backend_config, **kwargs)

    def _create_default_callbacks(self):
        drop = () if self.datasets else (DatasetsCallback,)
        if not self._placement_group_cleaner:
            drop += (PlacementGroupCleanerCallback,)
        return [c for c in super()._create_default_callbacks() if not isinstance(c, drop)]
