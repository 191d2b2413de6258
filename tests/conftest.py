"""Shared fixtures: one local Ray instance for the whole session, tiny configs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Caches (classifiers, real statistics) go to a per-session folder, never the user's ~/.cache.
_CACHE = Path(os.environ.setdefault("GANRAY_CACHE", tempfile.mkdtemp(prefix="ganray-test-cache-")))
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


@pytest.fixture(scope="session")
def ray_session():
    """A single local Ray instance shared by every test that needs Ray.

    4 logical CPUs on a 2-core machine: room for two training workers plus a Tune
    driver; the work itself is tiny. Started like `ganray train`'s own instance, so that at the
    end nothing it started outlives the session (ganray.instance.start_local_ray).
    """
    import ray

    from ganray.instance import shutdown_local_ray, start_local_ray

    if not ray.is_initialized():
        start_local_ray(
            num_cpus=4,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            runtime_env={"env_vars": {"PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}},
        )
    yield ray
    shutdown_local_ray()
    ray.shutdown()


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST test set not found at {MNIST_DIR}")
    return MNIST_DIR


@pytest.fixture(scope="session")
def mnist_classifier16(mnist_dir, tmp_path_factory) -> Path:
    """A quickly fitted 16 px MNIST evaluation classifier (1 epoch on 3,000 images, ~10 s).

    Tests that evaluate FID pass it as eval.classifier_path instead of fitting the full one.
    """
    from ganray.cli import main

    out = tmp_path_factory.mktemp("clf") / "mnist16.safetensors"
    rc = main(["evaluator", "fit", "--data", str(mnist_dir), "--resolution", "16", "--epochs", "1",
               "--max-images", "3000", "--heldout", "500", "--out", str(out)])
    assert rc == 0 and out.is_file()
    return out
