"""ganray.trainer.GanTrainer: Ray's TorchTrainer less the dataset manager of a run without datasets."""

from __future__ import annotations


def _trainer(cls, **kwargs):
    import ray.train

    from ganray.backend import ProcessGroupConfig

    return cls(lambda: None, scaling_config=ray.train.ScalingConfig(num_workers=1),
               torch_config=ProcessGroupConfig(), **kwargs)


def _has_datasets_callback(trainer) -> bool:
    from ray.train.v2._internal.callbacks import DatasetsCallback

    return any(isinstance(c, DatasetsCallback) for c in trainer._create_default_callbacks())


def test_dataset_manager_only_with_datasets(ray_session):
    import ray.data
    from ray.train.torch import TorchTrainer

    from ganray.trainer import GanTrainer

    # What this works around: Ray's trainer sets up Ray Data for a run without datasets too.
    assert _has_datasets_callback(_trainer(TorchTrainer))
    assert not _has_datasets_callback(_trainer(GanTrainer))
    assert _has_datasets_callback(_trainer(GanTrainer, datasets={"train": ray.data.range(4)}))
    # Everything else Ray's trainer sets up stays.
    ours = [type(c) for c in _trainer(GanTrainer)._create_default_callbacks()]
    rays = [type(c) for c in _trainer(TorchTrainer)._create_default_callbacks()]
    assert ours == [t for t in rays if t.__name__ != "DatasetsCallback"]
