"""Ingest throughput: Ray Data `iter_torch_batches` vs a torch DataLoader on the same images.

    python benchmarks/data_ingest.py [--source ../shared/data/mnist] [--epochs 3] [--json out.json]

Rows/s (median over epochs) of one process iterating the whole dataset in batches of 64
(drop_last), after warm-up epochs. Baselines: a DataLoader over the uint8 array already converted
to float [-1, 1] (the fastest possible in-memory case), shuffled or not. Ray rows: the load_dataset
pipeline iterated directly, and through `streaming_split(1)` as Ray Train hands a shard to a
worker, with and without a local shuffle buffer (on the float rows materialised as a file
source's are); and what a ganray worker runs: its driver-side split of the cached rows
(CachedRows for in-memory arrays like MNIST), read once by `batches.worker_batches` and
permuted in memory every epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ganray.config import DataConfig  # noqa: E402
from ganray.data import load_arrays, load_dataset  # noqa: E402


def rows_per_s(make_iter, epochs: int, warmup: int) -> tuple[float, int]:
    """Median rows/s over the timed epochs (robust to other load on a shared machine); rows per epoch."""
    rates, rows = [], 0
    for epoch in range(warmup + epochs):
        t0, rows = time.perf_counter(), 0
        for batch in make_iter():
            image = batch["image"] if isinstance(batch, dict) else batch[0]
            rows += image.shape[0]
        if epoch >= warmup:
            rates.append(rows / (time.perf_counter() - t0))
    return float(np.median(rates)), rows


def torch_loader(x_u8: np.ndarray, y: np.ndarray, batch: int, shuffle: bool):
    x = torch.from_numpy(x_u8).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0).contiguous()
    data = torch.utils.data.TensorDataset(x, torch.from_numpy(y))
    return torch.utils.data.DataLoader(data, batch_size=batch, shuffle=shuffle, drop_last=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default=str(REPO.parent / "shared" / "data" / "mnist"))
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--shuffle-buffer", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--num-cpus", type=int, default=os.cpu_count())
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    import ray

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    cfg = DataConfig(source=args.source, resolution=args.resolution)
    torch.set_num_threads(max(1, args.num_cpus))

    t0 = time.perf_counter()
    x, y, _ = load_arrays(cfg)
    t_arrays = time.perf_counter() - t0
    t0 = time.perf_counter()
    ds, info = load_dataset(cfg)
    t_dataset = time.perf_counter() - t0
    # Ray Data's own iteration, on the float rows materialised as a file source's would be
    # (in-memory arrays like MNIST's skip Ray Data in training: CachedRows)
    ray_ds = load_dataset(cfg, float_cache_max_bytes=0)[0].materialize()

    b, buf, seed = args.batch, args.shuffle_buffer, 0

    def ray_iter(shuffle: bool, split: bool):
        it = ray_ds.streaming_split(1, equal=True)[0] if split else ray_ds
        kw = {"local_shuffle_buffer_size": buf, "local_shuffle_seed": seed} if shuffle else {}
        return lambda: it.iter_torch_batches(batch_size=b, drop_last=True, **kw)

    def ganray_iter(shuffle_rows: int):
        """What a training worker runs, epoch after epoch: its driver-side split, read once by
        batches.worker_batches and reshuffled in memory (the first, warm-up epoch reads it)."""
        import itertools

        from ganray.batches import worker_batches
        from ganray.config import mnist
        from ganray.launch import worker_splits

        c = mnist()
        c.train.batch_size_per_worker, c.data.shuffle_buffer_rows = b, shuffle_rows
        split = worker_splits(ds, 1)[0]
        per_epoch = info.num_rows // b
        endless = worker_batches(split, c, 0, torch.device("cpu"), rows_per_rank=info.num_rows, in_memory=True)
        return lambda: itertools.islice(endless, per_epoch)

    def torch_iter(shuffle: bool):
        loader = torch_loader(x, y, b, shuffle)
        return lambda: iter(loader)

    cases = [
        ("torch DataLoader, float tensor", "none", torch_iter(False)),
        ("torch DataLoader, float tensor", "full (shuffle=True)", torch_iter(True)),
        ("ray Dataset.iter_torch_batches", "none", ray_iter(False, False)),
        ("ray Dataset.iter_torch_batches", f"local buffer {buf}", ray_iter(True, False)),
        ("ray streaming_split(1) shard", "none", ray_iter(False, True)),
        ("ray streaming_split(1) shard", f"local buffer {buf}", ray_iter(True, True)),
        ("ganray worker (split + worker_batches)", "none", ganray_iter(0)),
        ("ganray worker (split + worker_batches)", "full, seeded per epoch", ganray_iter(buf)),
    ]
    results = []
    for name, shuffle, make_iter in cases:
        rate, rows = rows_per_s(make_iter, args.epochs, args.warmup)
        results.append({"pipeline": name, "shuffle": shuffle, "rows_per_s": round(rate), "rows_per_epoch": rows})

    load = os.getloadavg()[0]
    print(f"load average {load:.1f} on {os.cpu_count()} cores")
    print(f"source {args.source}: {info.num_rows} rows, {info.resolution}px x {info.channels}ch, "
          f"batch {b}, {args.num_cpus} CPUs; load_dataset {t_dataset:.1f} s, load_arrays {t_arrays:.1f} s")
    print(f"{'pipeline':34} {'shuffle':22} {'rows/s':>10}")
    for r in results:
        print(f"{r['pipeline']:34} {r['shuffle']:22} {r['rows_per_s']:>10,}")
    if args.json:
        out = {"source": args.source, "num_rows": info.num_rows, "resolution": info.resolution,
               "batch": b, "num_cpus": args.num_cpus, "epochs": args.epochs, "warmup": args.warmup,
               "load_average": round(load, 1), "load_dataset_s": round(t_dataset, 2), "load_arrays_s": round(t_arrays, 2), "results": results}
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
