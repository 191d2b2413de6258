"""Evaluation with 2 real Ray Train workers (gloo, CPU) equals the single-process result.

One tiny TorchTrainer run checks both FeatureStats.all_reduce (to 1e-9 relative) and the whole
evaluate_generator path: uneven shares of noise blocks, all_gather of raw features and class
probabilities, rank 0 computing, the broadcast giving every rank the same dict.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from ganray.metrics import FeatureStats, evaluate_generator, real_stats
from ganray.metrics.realdata import RealData

DIM, ROWS = 5, (37, 20)  # feature width; rows per rank (unequal on purpose)
NUM_SAMPLES = 600  # 3 noise blocks of 256: rank 0 takes blocks 0 and 2, rank 1 block 1
ALL = ("fid", "kid", "is", "pr")


def rank_features(rank: int) -> torch.Tensor:
    return torch.randn(ROWS[rank], DIM, generator=torch.Generator().manual_seed(100 + rank)) * (rank + 1) + rank


def real_setup():
    from test_metrics_eval import R, toy_net

    pixels = np.random.default_rng(2).integers(0, 256, (600, R, R, 1), dtype=np.uint8)
    return real_stats(toy_net(), RealData(pixels, None, "fp-toy"), num_samples=600)


def evaluate_once():
    from test_metrics_eval import LATENT, TinyG, toy_net

    stats, features = real_setup()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 600 < 2048 samples
        return evaluate_generator(TinyG(), toy_net(), stats, num_samples=NUM_SAMPLES, batch_size=100,
                                  latent_dim=LATENT, device="cpu", seed=7, metrics=ALL, real_features=features)


def worker(config: dict) -> None:
    """Per-worker function: all-reduced statistics and a collective evaluation, saved per rank."""
    from ganray import dist

    torch.set_num_threads(1)
    rank = dist.rank()
    stats = FeatureStats(DIM).update(rank_features(rank)).all_reduce()
    mu, cov = stats.mean_cov()
    out = evaluate_once()
    torch.save({"mu": torch.from_numpy(mu), "cov": torch.from_numpy(cov), "count": stats.count,
                "world": dist.world_size(), "eval": out}, f"{config['out']}/rank{rank}.pt")


@pytest.mark.ray
def test_two_workers_match_one_process(ray_session, tmp_path):
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    TorchTrainer(
        worker,
        train_loop_config={"out": str(tmp_path)},
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=ray.train.RunConfig(name="metrics-dist", storage_path=str(tmp_path / "ray")),
    ).fit()
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world"] == 2 and r0["count"] == sum(ROWS)

    single = FeatureStats(DIM).update(torch.cat([rank_features(0), rank_features(1)]))
    mu, cov = single.mean_cov()
    np.testing.assert_allclose(r0["mu"].numpy(), mu, rtol=1e-9)
    np.testing.assert_allclose(r0["cov"].numpy(), cov, rtol=1e-9)
    np.testing.assert_array_equal(r1["cov"].numpy(), r0["cov"].numpy())

    assert r0["eval"].keys() == r1["eval"].keys()
    for key in r0["eval"]:
        if key != "eval_s":
            assert r1["eval"][key] == r0["eval"][key], f"{key}: ranks disagree"
    one = evaluate_once()
    for key in ("fid", "kid", "kid_std", "is", "is_std", "precision", "recall", "mode_entropy", "modes"):
        assert r0["eval"][key] == pytest.approx(one[key], rel=1e-5, abs=1e-9), key
