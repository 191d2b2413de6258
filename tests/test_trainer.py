"""ganray.trainer.GanTrainer: Ray's data-parallel trainer with ganray's backend, no torch on the
driver, and no dataset manager for a run without datasets."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def _trainer(cls, **kwargs):
    import ray.train

    from ganray.backend import ProcessGroupConfig

    key = "torch_config" if cls.__name__ == "TorchTrainer" else "backend_config"
    return cls(lambda: None, scaling_config=ray.train.ScalingConfig(num_workers=1),
               **{key: ProcessGroupConfig()}, **kwargs)


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
    # Everything else Ray's TorchTrainer sets up stays.
    ours = [type(c) for c in _trainer(GanTrainer)._create_default_callbacks()]
    rays = [type(c) for c in _trainer(TorchTrainer)._create_default_callbacks()]
    assert ours == [t for t in rays if t.__name__ != "DatasetsCallback"]


def test_placement_group_cleaner_only_where_the_instance_can_outlive_the_run(ray_session):
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    from ganray.instance import owns_ray_instance
    from ganray.trainer import GanTrainer

    def kinds(trainer):
        return [type(c) for c in trainer._create_default_callbacks()]

    assert PlacementGroupCleanerCallback in kinds(_trainer(GanTrainer))
    without = kinds(_trainer(GanTrainer, placement_group_cleaner=False))
    assert without == [t for t in kinds(_trainer(GanTrainer)) if t is not PlacementGroupCleanerCallback]
    # The test session's instance was started by conftest, not by ensure_ray: a run on it keeps
    # the cleaner, as a run on a cluster or in a Tune trial does.
    assert not owns_ray_instance()


def test_refuses_what_it_cannot_run():
    import ray.train

    from ganray.trainer import GanTrainer

    with pytest.raises(TypeError, match="ProcessGroupConfig"):
        GanTrainer(backend_config=ray.train.backend.BackendConfig())
    with pytest.raises(ValueError, match="num_workers >= 1"):
        GanTrainer(scaling_config=ray.train.ScalingConfig(num_workers=0))


def test_driver_builds_a_run_without_importing_torch(tmp_path, ray_session):
    """`ganray train`'s driver with evaluation on and cached (every run after the first on a
    dataset) prepares the run and builds its trainer without importing torch; so does a Tune
    trial, which gets its evaluation inputs from the search. A fresh interpreter proves it,
    since this test process has torch loaded already: a single import anywhere on the path
    fails it. The interpreter joins the test session's Ray instance."""
    import os

    from ganray.config import debug
    from ganray.data import load_arrays
    from ganray.metrics.training import prepare_eval

    cfg = debug()  # the built-in digits
    cfg.eval.features, cfg.eval.cache_dir, cfg.eval.fid_samples = "classifier", str(tmp_path / "cache"), 2048
    assert prepare_eval(cfg, load_arrays(cfg.data, limit=1)[2]) is not None  # trains and caches, with torch
    script = textwrap.dedent(f"""
        import sys
        from ganray.config import debug
        from ganray.instance import ensure_ray
        from ganray.launch import build_trainer, prepare
        cfg = debug()
        cfg.run.out = {str(tmp_path / "runs")!r}
        cfg.eval.features, cfg.eval.cache_dir, cfg.eval.fid_samples = "classifier", {cfg.eval.cache_dir!r}, 2048
        ensure_ray(1)
        p = prepare(cfg)
        trainer = build_trainer(p)
        trainer.backend_config.train_func_context  # read on the driver when fit() wraps the function
        print(trainer._placement_group_cleaner)  # joined an instance that outlives it
        print(type(trainer).__name__, p.loop_config["eval"]["feature_name"], "torch" in sys.modules)
    """)
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-4:] == ["True", "GanTrainer", "classifier", "False"]


def test_a_run_on_its_own_local_instance_starts_no_placement_group_cleaner(tmp_path):
    """`ganray train` without an address starts a Ray instance that ends with it; there a run
    drops Ray Train's placement-group cleaner, and Ray keeps no idle worker processes (two
    tasks' workers are gone within 10 s; Ray's default would keep them). A fresh interpreter
    starts its own instance."""
    import os

    script = textwrap.dedent(f"""
        import os, time
        import ray
        from ganray.config import debug
        from ganray.instance import ensure_ray, owns_ray_instance
        from ganray.launch import build_trainer, prepare
        cfg = debug()
        cfg.run.out, cfg.eval.features = {str(tmp_path / "runs")!r}, "none"
        ensure_ray(1)
        print(owns_ray_instance(), build_trainer(prepare(cfg))._placement_group_cleaner)
        pids = set(ray.get([ray.remote(lambda: os.getpid()).options(num_cpus=1).remote() for _ in range(2)]))
        deadline = time.time() + 10
        while time.time() < deadline and any(os.path.exists(f"/proc/{{p}}") for p in pids):
            time.sleep(0.2)
        print(not any(os.path.exists(f"/proc/{{p}}") for p in pids))
        ray.shutdown()
        print(owns_ray_instance())
    """)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, env=env,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-4:] == ["True", "False", "True", "False"]
