"""Ray's TorchTrainer, less the dataset manager of a run that gives Ray Train no datasets.

Ray Train V2 starts a `DatasetManager` actor for every run, datasets or not, and at worker
start runs a task on each worker to hand it Ray Data's context. ganray gives cached data to
the workers as fixed splits in the loop config (`launch.worker_splits`), so for cached data,
the default, that actor and that round trip serve nothing. The actor is one more Python
process beside the workers for the whole run (measured on the 2-core benchmark machine:
197 MiB resident, and 0.5-0.7% of a core while idle, since Ray's task loop wakes 100 times a
second). With Ray datasets (streaming sources) the trainer is Ray's unchanged.

`_create_default_callbacks` is not public API; ganray pins Ray to 2.60.x, where it is the
method `fit()` calls for its callback list. `tests/test_trainer.py` pins that behaviour.
"""

from __future__ import annotations

from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks import DatasetsCallback


class GanTrainer(TorchTrainer):
    def _create_default_callbacks(self):
        callbacks = super()._create_default_callbacks()
        if self.datasets:
            return callbacks
        return [c for c in callbacks if not isinstance(c, DatasetsCallback)]
