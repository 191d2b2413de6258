"""The four touch points between the training loop and whatever runs it.

`RayTrainSession` is the normal case: a Ray Train worker (context, dataset shard, checkpoint,
report). `TuneSession` runs the same loop in-process inside a single-worker Tune trial and reports
checkpoints to Tune itself, which is what lets Population Based Training copy one trial's
checkpoint into another (Tune cannot see checkpoints that a nested Ray Train trainer reports).
"""

from __future__ import annotations

import os
from typing import Any

import torch


class RayTrainSession:
    # Ray Train V2's controller collects a worker's (single-slot) report queue once per health
    # check; reporting faster than that blocks the training thread.
    min_report_interval_s = float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0"))

    def __init__(self):
        import ray.train
        import ray.train.torch

        self._train = ray.train
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.local_world = ctx.get_local_world_size()  # this node's workers of the group
        self.device = ray.train.torch.get_device()

    def get_checkpoint(self):
        return self._train.get_checkpoint()

    def dataset_shard(self, splits=None):
        """This rank's data: its split of a cached dataset when the driver made them
        (launch.worker_splits), else Ray Train's streaming split."""
        if splits is not None:
            return splits[self.rank]
        return self._train.get_dataset_shard("train")

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None, name: str | None = None) -> None:
        if name is None:
            self._train.report(metrics)
        else:
            ckpt = self._train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
            self._train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=name)


class TuneSession:
    """World size 1 in the Tune trial's own process; the dataset is iterated directly."""

    rank, world, local_world = 0, 1, 1
    min_report_interval_s = 0.0  # tune.report hands each result straight to the trial's runner

    def __init__(self, dataset):
        import ray
        from ray import tune

        self._tune = tune
        self._dataset = dataset
        # The GPU Ray gave the trial (trial_resources), if any: never one it did not reserve.
        self.device = torch.device("cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu")

    def get_checkpoint(self):
        return self._tune.get_checkpoint()

    def dataset_shard(self, splits=None):
        return self._dataset

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None, name: str | None = None) -> None:
        from ray.tune import Checkpoint

        ckpt = Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        self._tune.report(metrics, checkpoint=ckpt)
