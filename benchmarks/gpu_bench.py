"""The GPU check behind benchmarks/gpu_check.sh: plain loop vs ganray, fp32 vs bf16, feature throughput.

On CUDA: DCGAN at 64x64 (3 channels, width 64), batch 256, MNIST resized; on CPU the same code
path at tiny sizes, so CI proves the script runs end to end without a GPU. Both loops run in
this process and share one local Ray, which keeps the whole check within a few minutes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from common import Row, steady

from plain_loop import load_images, plain_loop


@dataclass
class GpuSize:
    resolution: int
    width: int
    batch: int
    steps: int
    report: int
    feature_batch: int
    feature_images: int


CUDA = GpuSize(resolution=64, width=64, batch=256, steps=100, report=20, feature_batch=500, feature_images=20_000)
CPU_TINY = GpuSize(resolution=16, width=8, batch=16, steps=6, report=2, feature_batch=256, feature_images=1024)


def _config(source: str, z: GpuSize, precision: str, use_gpu: bool, out, name: str):
    from ganray.config import load_config

    return load_config(None, [
        f"data.source={source}", f"data.resolution={z.resolution}", "data.channels=3",
        "model.conditional=false",
        f"model.g_width={z.width}", f"model.d_width={z.width}", f"train.batch_size_per_worker={z.batch}",
        f"train.precision={precision}", f"train.use_gpu={str(use_gpu).lower()}", "train.kimg=null",
        f"train.steps={z.steps}", f"train.report_every_kimg={z.report * z.batch / 1000:.6f}",
        "train.checkpoint_every_kimg=1e6", "eval.features=none", f"run.out={out}", f"run.name={name}",
    ], preset="dcgan")  # the seed's DCGAN (BatchNorm D, no spectral norm, no R1), whatever the default preset is


def _ganray(cfg, z: GpuSize) -> dict:
    from ganray.launch import run_training
    from ganray.runfolder import RunFolder

    summary = run_training(cfg, progress=False)
    run = RunFolder(summary["run_dir"])
    run.load_metrics(None)
    return {**steady(run.rows, z.batch), "startup_s": summary.get("startup", {}).get("total_s"),
            "startup": summary.get("startup")}


def _feature_rows(device, z: GpuSize) -> list[Row]:
    import torch

    from ganray.metrics import inception
    from ganray.metrics.classifier import Classifier

    x = torch.rand(z.feature_batch, 3, z.resolution, z.resolution, device=device) * 2 - 1
    rows = []
    net = Classifier(3, 10).to(device).eval()
    nets = [("classifier", net.features)]
    try:
        if inception.is_available() and inception.local_weights(None) is not None:
            from ganray.metrics.features import inception_net

            nets.append(("inception (299 px)", inception_net(None, device).features))
    except inception.InceptionUnavailable:
        pass
    for name, features in nets:
        n = z.feature_images if name == "classifier" else z.feature_images // 4
        with torch.no_grad():
            features(x)  # warm-up: cuDNN autotuning, allocator
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(max(1, n // z.feature_batch)):
                features(x)
            _sync(device)
        rate = max(1, n // z.feature_batch) * z.feature_batch / (time.perf_counter() - t0)
        rows.append(Row("gpu", f"FID features, {name}", rate, "img/s", note=f"batch {z.feature_batch}"))
    if len(nets) == 1:
        rows.append(Row("gpu", "FID features, inception", None, note="skipped: no local Inception weights"))
    return rows


def _sync_rows(source: str, z: GpuSize, device, images, out) -> list[Row]:
    """Host-device synchronisations per training step (the step, NaN guard, EMA, running means)."""
    if device.type != "cuda":
        return [Row("gpu", "host syncs per step", None, note="CUDA only (its sync debug mode)")]
    rows = []
    for precision in ("fp32", "bf16", "fp16"):
        cfg = _config(source, z, precision, True, out, "syncs")
        n = plain_loop(cfg, steps=6, report_every=3, device=device, images=images, count_syncs=True)
        sites = ", ".join(f"{k} x{v}" for k, v in n["host_sync_sites"].items())
        row = Row("gpu", f"host syncs per step, {precision}", n["host_syncs_per_step"], "", "0",
                  note=f"5 steps; at {sites}" if sites else "5 steps")
        row.ok = row.value == 0
        rows.append(row)
    return rows


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gpu_rows(ctx) -> list[Row]:
    import ray
    import torch

    from ganray.steps import Precision

    device = torch.device(ctx.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: torch sees no CUDA device (use --device cpu for the CPU smoke run)")
    z = CUDA if device.type == "cuda" else CPU_TINY
    source = ctx.source if device.type == "cuda" else "digits"  # the CPU smoke run: 1,797 small images
    was_running = ray.is_initialized()
    rows: list[Row] = []
    details = {"auto_precision": str(Precision.create("auto", device).dtype), "size": z.__dict__}
    cfg0 = _config(source, z, "fp32", device.type == "cuda", ctx.out, "probe")
    images = load_images(cfg0, device)
    note = f"{z.resolution} px, batch {z.batch}, width {z.width}, {z.steps} steps"
    try:
        for precision in ("fp32", "bf16"):
            cfg = _config(source, z, precision, device.type == "cuda", ctx.out, f"gpu_{precision}")
            plain = plain_loop(cfg, steps=z.steps, report_every=z.report, device=device, images=images)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            ganray = _ganray(cfg, z)
            details[precision] = {"plain": plain, "ganray": ganray}
            rows += [Row("gpu", f"plain loop img/s, {precision}", plain["img_per_s"], "img/s", note=note),
                     Row("gpu", f"ganray 1 worker img/s, {precision}", ganray["img_per_s"], "img/s"),
                     Row("gpu", f"  ganray / plain, {precision}", ganray["img_per_s"] / plain["img_per_s"]
                         if ganray["img_per_s"] and plain["img_per_s"] else None, "x", ">= 0.97")]
            rows[-1].ok = None if rows[-1].value is None else rows[-1].value >= 0.97
        fp32, bf16 = (details[p]["ganray"]["img_per_s"] for p in ("fp32", "bf16"))
        rows.append(Row("gpu", "ganray bf16 / fp32", bf16 / fp32 if bf16 and fp32 else None, "x",
                        note=f"auto precision here: {details['auto_precision']}"))
        rows += _sync_rows(source, z, device, images, ctx.out)
        rows += _feature_rows(device, z)
    finally:
        if not was_running and ray.is_initialized():
            ray.shutdown()
    ctx.details["gpu"] = details
    return rows
