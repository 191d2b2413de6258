"""The plain PyTorch baseline: ganray's model and step math, no Ray, no Ray Data.

    python benchmarks/plain_loop.py [--preset mnist] [--set train.batch_size_per_worker=64 ...]
                                    [--steps 200] [--report-every 20] [--threads 2] [--workers 1]
                                    [--json out.json]

The data is held in one float32 tensor (N x C x H x W in [-1, 1], on the device) and each
epoch is a random permutation of it, so reading a batch is one index_select. Everything
else is what one ganray worker does per step: the same `build_state` (models, Adam, EMA),
the same `train_step` (D update, G update, non-finite check on the device), the same per-step noise
generator and learning-rate assignment, and the EMA update. Missing are Ray Train, Ray Data,
the run-folder bookkeeping and the worker's backup of BatchNorm statistics for a skipped step
(`train_loop._NanGuard`, a foreach copy and a `where` per buffer), so ganray_img_per_s /
plain_img_per_s is the price of the Ray layer and of that guard.

img/s is measured like ganray's metrics.csv: over windows of `report_every` steps, the first
window (warm-up: allocator, oneDNN primitive caches) left out.

`--workers N` (N > 1) is plain DDP: N processes from `torch.multiprocessing` with a gloo process
group, each the loop above with G and D wrapped as ganray's workers wrap them (`dist.wrap_ddp`),
its own rows (rank::N) and noise seeds; img/s is the sum over ranks. It is the reference for
ganray's data-parallel scaling on the same machine: what PyTorch alone gets from N workers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ganray import dist  # noqa: E402
from ganray.batches import seed_for  # noqa: E402
from ganray.config import Config, load_config  # noqa: E402
from ganray.state import build_state  # noqa: E402
from ganray.steps import Precision, lr_factor, train_step  # noqa: E402


def load_images(cfg: Config, device: torch.device, limit: int | None = None) -> torch.Tensor:
    """The configured data as one float32 N x C x H x W tensor in [-1, 1] on `device`."""
    from ganray.data import load_arrays

    x, _, _ = load_arrays(cfg.data, limit=limit)  # uint8 N x H x W x C
    real = torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    return real.contiguous().to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _counting_syncs(counts: list[int], sites: dict[str, int], active: bool):
    """Append the number of host-device synchronisations in the block (CUDA's sync debug mode);
    count each one's Python line in `sites`."""
    if not active:
        yield
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    counts.append(len(syncs))
    for w in syncs:
        site = f"{Path(w.filename).name}:{w.lineno}"
        sites[site] = sites.get(site, 0) + 1


def steady_img_per_s(windows: list[tuple[int, float]]) -> float:
    """Images over seconds of all windows but the first: (images, seconds) per window."""
    rest = windows[1:] or windows
    seconds = sum(s for _, s in rest)
    return sum(n for n, _ in rest) / seconds if seconds > 0 else 0.0


def plain_loop(cfg: Config, *, steps: int, report_every: int, device: str | torch.device = "cpu",
               threads: int | None = None, images: torch.Tensor | None = None, count_syncs: bool = False) -> dict:
    """Train `steps` steps on one process; return img/s per window and in steady state.

    count_syncs (CUDA only): count the host-device synchronisations inside the steps after the
    first with CUDA's sync debug mode (which also costs time: do not time such a run).
    """
    device = torch.device(device)
    if threads:
        torch.set_num_threads(threads)
    if cfg.model.conditional is True:
        raise ValueError("plain_loop benchmarks unconditional models only (model.conditional=false)")
    cfg = cfg.model_copy(deep=True)
    cfg.model.conditional = False  # "auto" (the mnist preset): the plain loop has no labels
    real_all = images if images is not None else load_images(cfg, device)
    B, latent = cfg.train.batch_size_per_worker, cfg.model.latent_dim
    if len(real_all) < B:
        raise ValueError(f"data has {len(real_all)} images, fewer than train.batch_size_per_worker={B}")
    prec = Precision.create(cfg.train.precision, device)
    st = build_state(cfg, None, device)
    G, D = dist.wrap_ddp(st.G, device), dist.wrap_ddp(st.D, device)  # unchanged without a process group
    rank = dist.rank()
    if cfg.train.compile:
        G, D = torch.compile(G), torch.compile(D)
    d_steps = cfg.optim.d_steps
    images_per_step = B * d_steps
    order, pos = torch.randperm(len(real_all), device=device), 0
    acc: dict[str, torch.Tensor] = {}
    windows: list[tuple[int, float]] = []
    ends: list[float] = []  # each window's end, time.perf_counter()
    t_start = t_window = time.perf_counter()
    first_step_s = None
    syncs: list[int] = []
    sync_sites: dict[str, int] = {}
    for step in range(steps):
        with _counting_syncs(syncs, sync_sites, count_syncs and device.type == "cuda" and step > 0):
            for opt, lr in ((st.opt_g, cfg.optim.lr_g), (st.opt_d, cfg.optim.lr_d)):
                for group in opt.param_groups:
                    group["lr"] = lr * lr_factor(cfg.optim.lr_schedule, step / steps)
            gen = torch.Generator(device).manual_seed(seed_for(cfg.train.seed, rank, step))
            reals = []
            for _ in range(d_steps):
                if pos + B > len(order):
                    order, pos = torch.randperm(len(real_all), device=device), 0
                reals.append((real_all.index_select(0, order[pos:pos + B]), None))
                pos += B
            n_z = d_steps + (1 if d_steps > 1 else 0)
            zs = [torch.randn(B, latent, device=device, generator=gen) for _ in range(n_z)]
            values, bad = train_step(G, D, st.opt_g, st.opt_d, reals, zs, cfg.loss, step=step, prec=prec,
                                     generator=gen)
            st.step += 1
            st.images_seen += images_per_step
            if st.ema is not None:
                st.ema.update(G, images_per_step, st.images_seen, skip=bad)
            for key, v in values.items():
                acc[key] = acc.get(key, 0) + torch.where(bad, 0.0, v.float())
        if first_step_s is None:
            _sync(device)
            first_step_s = time.perf_counter() - t_start
        if (step + 1) % report_every == 0 or step + 1 == steps:
            _sync(device)
            now = time.perf_counter()
            n = report_every if (step + 1) % report_every == 0 else (step + 1) % report_every
            windows.append((n * images_per_step, now - t_window))
            ends.append(now)
            t_window = now
    wall = time.perf_counter() - t_start
    return {
        "steps": steps,
        "batch": B,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "precision": cfg.train.precision,
        "img_per_s": steady_img_per_s(windows),
        "best_img_per_s": max((n / s for n, s in windows[1:] or windows), default=0.0),
        "window_img_per_s": [round(n / s, 1) for n, s in windows],
        "windows": [(end, n, s) for end, (n, s) in zip(ends, windows)],  # (perf_counter at its end, images, s)
        "first_step_s": first_step_s,
        "wall_s": wall,
        "final": {k: float(v) / steps for k, v in acc.items()},
        "host_syncs_per_step": sum(syncs) / len(syncs) if syncs else None,
        "host_sync_sites": sync_sites,
    }


def plain_ddp(cfg: Config, *, workers: int, steps: int, report_every: int, threads: int = 1,
              timeout_s: float = 1800) -> dict:
    """`plain_loop` in `workers` processes under DDP (gloo, CPU); img/s summed over ranks."""
    import queue
    import socket

    import torch.multiprocessing as mp

    if workers < 2:
        raise ValueError(f"plain_ddp needs workers >= 2, got {workers}")
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_ddp_rank, args=(cfg.to_dict(), r, workers, port, steps, report_every, threads, results))
             for r in range(workers)]
    for proc in procs:
        proc.start()
    outs: list[dict] = []
    deadline = time.monotonic() + timeout_s
    try:
        # One failed rank leaves the others waiting in a collective: stop at the first failure.
        while len(outs) < workers:
            try:
                out = results.get(timeout=1.0)
            except queue.Empty:
                dead = [proc.exitcode for proc in procs if proc.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"plain DDP: a rank's process exited with code {dead[0]} without a result") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"plain DDP: no result from every rank within {timeout_s:.0f} s") from None
                continue
            if "error" in out:
                raise RuntimeError(f"plain DDP rank {out['rank']} failed:\n{out['error']}")
            outs.append(out)
    finally:
        for proc in procs:
            proc.join(timeout=30 if len(outs) == workers else 0)
            if proc.is_alive():
                proc.kill()
    outs.sort(key=lambda o: o["rank"])
    total = dict(outs[0])
    total.pop("windows", None)  # rank 0's alone
    for key in ("img_per_s", "best_img_per_s"):
        total[key] = sum(o[key] for o in outs)
    total["window_img_per_s"] = [round(sum(w), 1) for w in zip(*(o["window_img_per_s"] for o in outs))]
    total["wall_s"] = max(o["wall_s"] for o in outs)
    total.update(workers=workers, per_rank_img_per_s=[o["img_per_s"] for o in outs])
    return total


def _ddp_rank(cfg_dict: dict, rank: int, world: int, port: int, steps: int, report_every: int, threads: int,
              results) -> None:
    import os
    import traceback

    import torch.distributed as torch_dist

    from ganray.config import from_dict

    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.set_num_threads(threads)
        torch_dist.init_process_group("gloo", rank=rank, world_size=world)
        cfg = from_dict(cfg_dict)
        images = load_images(cfg, torch.device("cpu"))[rank::world].contiguous()
        out = plain_loop(cfg, steps=steps, report_every=report_every, threads=threads, images=images)
        results.put({**out, "rank": rank})
        torch_dist.destroy_process_group()
    except Exception:  # noqa: BLE001 (any failure: the parent reports it; a silent child would leave it waiting)
        results.put({"rank": rank, "error": traceback.format_exc()})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="mnist")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--report-every", type=int, default=20, help="steps per img/s window")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=1, help="processes; more than 1: plain DDP over gloo (CPU)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    cfg = load_config(None, args.overrides, preset=args.preset)
    if args.workers < 1:
        p.error(f"--workers must be at least 1, got {args.workers}")
    if args.workers > 1:
        if args.device != "cpu":
            p.error("--workers > 1 runs on the CPU only (gloo)")
        out = plain_ddp(cfg, workers=args.workers, steps=args.steps, report_every=args.report_every,
                        threads=args.threads or 1)
    else:
        out = plain_loop(cfg, steps=args.steps, report_every=args.report_every, device=args.device,
                         threads=args.threads)
    print(f"plain loop: {out['img_per_s']:.1f} img/s steady ({out['steps']} steps, batch {out['batch']}, "
          f"{out['threads']} threads, {args.workers} worker(s), {out['device']}, "
          f"first step {out['first_step_s']:.2f} s)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
