"""Correctness under data parallelism with 2 real Ray Train workers (gloo, CPU)."""

from __future__ import annotations

import json

import torch

import dist_workers as W


def _flat(sd: dict) -> dict:
    out = {}
    for net, tensors in sd.items():
        for k, v in tensors.items():
            out[f"{net}.{k}"] = v
    return out


def test_two_workers_stay_identical_and_match_one_big_batch(ray_session, tmp_path):
    import ray.train
    from ray.train.torch import TorchTrainer

    from ganray.backend import ProcessGroupConfig

    trainer = TorchTrainer(
        W.consistency_worker,
        train_loop_config={"out": str(tmp_path)},
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        torch_config=ProcessGroupConfig(backend="gloo"),  # what ganray's runs use
        run_config=ray.train.RunConfig(name="consistency", storage_path=str(tmp_path / "ray")),
    )
    trainer.fit()

    # ganray's backend: one gloo group of 2, torchrun's variables per rank, one rendezvous.
    envs = [json.loads((tmp_path / f"env_rank{r}.json").read_text()) for r in (0, 1)]
    for r, e in enumerate(envs):
        assert (e["pg_rank"], e["pg_world"], e["pg_backend"]) == (r, 2, "gloo")
        assert (e["env"]["RANK"], e["env"]["WORLD_SIZE"], e["env"]["LOCAL_RANK"]) == (str(r), "2", str(r))
    assert envs[0]["env"]["MASTER_ADDR"] and envs[0]["env"]["MASTER_PORT"]
    assert len({(e["env"]["MASTER_ADDR"], e["env"]["MASTER_PORT"]) for e in envs}) == 1
    for e in envs:  # the DDP wrapper: no buffer sync in forward, no deprecation warning from torch
        assert (e["ddp_type"], e["ddp_forward_buffer_sync"], e["ddp_warnings"]) == ("DistributedDataParallel", False, [])

    # (a) BatchNorm DCGAN with spectral norm, different data per rank: every parameter and
    # buffer (BN running stats after averaging, SN power-iteration vectors, EMA) bitwise equal.
    r0 = _flat(torch.load(tmp_path / "bn_rank0.pt", weights_only=True))
    r1 = _flat(torch.load(tmp_path / "bn_rank1.pt", weights_only=True))
    assert r0.keys() == r1.keys()
    assert any("running_mean" in k for k in r0) and any("_u" in k for k in r0)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"{k} differs between ranks"
    initial = _flat(W.run_steps(W.debug(), slice(0, W.BATCH), steps=0))
    assert any(not torch.equal(initial[k], r0[k]) for k in r0 if k.startswith("G.")), "G did not train"

    # (b) no BatchNorm, R1 every step: 2 workers x batch b == 1 worker x batch 2b.
    two = _flat(torch.load(tmp_path / "nobn_rank0.pt", weights_only=True))
    one = _flat(W.run_steps(W.bn_free_config(r1_gamma=1.0, r1_every=1), slice(0, 2 * W.BATCH)))
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-5, msg=f"{k}: 2x{W.BATCH} != 1x{2 * W.BATCH}")
