"""Worker functions for the 2-worker consistency tests (imported by Ray workers by name)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from ganray import dist
from ganray.config import debug
from ganray.models import build_discriminator, build_generator
from ganray.steps import EMA, Precision, train_step

STEPS = 4
BATCH = 8


def fixed_inputs(cfg, total_batch: int, steps: int):
    """The same real batches and noise for every run, whatever the world size."""
    g = torch.Generator().manual_seed(123)
    reals = [torch.rand(total_batch, cfg.data.channels, cfg.data.resolution, cfg.data.resolution, generator=g) * 2 - 1
             for _ in range(steps)]
    zs = [torch.randn(total_batch, cfg.model.latent_dim, generator=g) for _ in range(steps)]
    return reals, zs


def run_steps(cfg, rows: slice, *, steps: int = STEPS, total_batch: int = 2 * BATCH):
    """Build G, D from the seed, wrap for DDP (no-op at world size 1), train on fixed rows."""
    torch.manual_seed(cfg.train.seed)
    G = build_generator(cfg.model, cfg.data, None)
    D = build_discriminator(cfg.model, cfg.data, None)
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.5, 0.999), fused=True)
    opt_d = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.5, 0.999), fused=True)
    ema = EMA(G, half_life_kimg=0.01, rampup=None)
    G_ddp, D_ddp = dist.wrap_ddp(G, torch.device("cpu")), dist.wrap_ddp(D, torch.device("cpu"))
    reals, zs = fixed_inputs(cfg, total_batch, steps)
    prec = Precision.create("fp32", torch.device("cpu"))
    for step in range(steps):
        _, skipped = train_step(G_ddp, D_ddp, opt_g, opt_d, [(reals[step][rows], None)], [zs[step][rows]],
                                cfg.loss, step=step, prec=prec)
        assert not skipped
        ema.update(G_ddp, total_batch, (step + 1) * total_batch)
    dist.average_buffers(G)
    dist.average_buffers(D)
    ema.copy_buffers(G)
    return {"G": G.state_dict(), "D": D.state_dict(), "G_ema": ema.model.state_dict()}


def bn_free_config(**loss):
    cfg = debug()
    cfg.model.g_norm = "none"
    cfg.model.d_norm = "none"
    for k, v in loss.items():
        setattr(cfg.loss, k, v)
    return cfg


def consistency_worker(config: dict) -> None:
    """Runs on each of 2 Ray Train workers; saves its final state for the test to compare."""
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    torch.set_num_threads(1)
    out = Path(config["out"])
    # What the trainer's backend set up (ganray.backend in the test): the process group and
    # torchrun's variables, for this rank.
    import torch.distributed as torch_dist

    env = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    # ganray's DDP wrapper on this torch: no buffer sync in forward, and no deprecation warning.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wrapped = dist.wrap_ddp(torch.nn.BatchNorm1d(2), torch.device("cpu"))
    (out / f"env_rank{rank}.json").write_text(json.dumps(
        {"env": env, "pg_rank": torch_dist.get_rank(), "pg_world": torch_dist.get_world_size(),
         "pg_backend": torch_dist.get_backend(), "ddp_type": type(wrapped).__name__,
         "ddp_forward_buffer_sync": wrapped.broadcast_buffers, "ddp_warnings": [str(w.message) for w in caught]}))
    # (a) the default BatchNorm DCGAN, each rank on different data.
    cfg = debug()
    cfg.model.spectral_norm = True
    sd = run_steps(cfg, slice(rank * BATCH, (rank + 1) * BATCH))
    torch.save(sd, out / f"bn_rank{rank}.pt")
    # (b) BatchNorm-free with lazy R1 every step: 2 x b must equal 1 x 2b.
    cfg = bn_free_config(r1_gamma=1.0, r1_every=1)
    sd = run_steps(cfg, slice(rank * BATCH, (rank + 1) * BATCH))
    torch.save(sd, out / f"nobn_rank{rank}.pt")
    ray.train.report({"done": 1})
