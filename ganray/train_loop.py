"""The per-worker function Ray Train runs (through ganray.trainer.train_worker); the only
worker-side caller of ray.train.

Reads top to bottom like the PyTorch DCGAN example: (1) update D, (2) update G, then
bookkeeping. Ray appears at the edges only: context, dataset shard, checkpoint, report.
"""

from __future__ import annotations

import math
import os
import re
import time
from typing import Any

import numpy as np
import torch

from ganray import affinity, dist, faults
from ganray import checkpoint as ckpt_io
from ganray.augment import diff_augment
from ganray.batches import seed_for, worker_batches
from ganray.config import Config, from_dict
from ganray.data import is_cached
from ganray.runfolder import RunFolder, encode_png, image_grid, to_uint8
from ganray.state import TrainState, build_state
from ganray.steps import Precision, lr_factor, train_step

GRID_SIZE = 64


class DivergenceError(RuntimeError):
    """Training produced non-finite gradients too often; rollbacks did not help."""


def _total_steps(cfg: Config, world: int) -> int:
    per_step = cfg.train.batch_size_per_worker * world * cfg.optim.d_steps
    limits = []
    if cfg.train.kimg is not None:
        limits.append(math.ceil(cfg.train.kimg * 1000 / per_step))
    if cfg.train.steps is not None:
        limits.append(cfg.train.steps)
    return min(limits) if limits else 2**62  # max_minutes alone


class _Every:
    """Fires each time images_seen crosses a multiple of `kimg`."""

    def __init__(self, kimg: float | None, images_seen: int):
        self.every = None if kimg is None else max(int(kimg * 1000), 1)
        self.next = None if self.every is None else (images_seen // self.every + 1) * self.every

    def due(self, images_seen: int) -> bool:
        if self.next is None or images_seen < self.next:
            return False
        self.next = (images_seen // self.every + 1) * self.every
        return True


def _schedules(cfg: Config, images_seen: int, evaluating: bool) -> tuple[_Every, _Every, _Every | None]:
    """When to report, checkpoint and evaluate, counted from `images_seen` (a start or a rollback)."""
    t = cfg.train
    return (_Every(t.report_every_kimg, images_seen), _Every(t.checkpoint_every_kimg, images_seen),
            _Every(cfg.eval.every_kimg or t.checkpoint_every_kimg, images_seen) if evaluating else None)


def train_worker(loop_config: dict[str, Any], session=None) -> None:
    from ganray.session import RayTrainSession

    session = session or RayTrainSession()
    marks = {**loop_config.get("startup_marks", {}), "worker_start": time.time()}
    # Before torch starts any thread here: its intra-op pool inherits this thread's cores.
    with affinity.pinned(bool(loop_config.get("cpu_affinity")), int(loop_config.get("threads", 1)),
                         group=loop_config["run_dir"], local_world=getattr(session, "local_world", 1)) as cores:
        _train(loop_config, session, marks, cores)


def _train(loop_config: dict[str, Any], session, marks: dict[str, float], cores: list[int] | None) -> None:
    # The shard first: for a streaming dataset this starts Ray Data's split coordinator (an actor
    # process), which then starts up while this worker builds its models instead of after.
    shard = session.dataset_shard(loop_config.get("dataset_splits"))
    cfg = from_dict(loop_config["config"])
    rank, world, device = session.rank, session.world, session.device
    torch.set_num_threads(int(loop_config.get("threads", 1)))
    prec = Precision.create(cfg.train.precision, device)

    st = build_state(cfg, loop_config.get("num_classes"), device)
    _restore(st, session.get_checkpoint(), _checkpoints_on_disk(loop_config["run_dir"]))
    if cfg.model.sync_batchnorm and world > 1:
        st.G = torch.nn.SyncBatchNorm.convert_sync_batchnorm(st.G)
        st.D = torch.nn.SyncBatchNorm.convert_sync_batchnorm(st.D)
    G = dist.wrap_ddp(st.G, device)
    D = dist.wrap_ddp(st.D, device)
    if cfg.train.compile:
        G, D = torch.compile(G), torch.compile(D)

    run = RunFolder(loop_config["run_dir"]) if rank == 0 else None
    tracker = None
    if run is not None:
        run.load_metrics(upto_step=st.step)
        tracker = _make_tracker(loop_config["run_dir"], cfg, st.step)
        _record_workers(run, world, cores)
    else:
        _record_workers(None, world, cores)
    evaluator = _make_evaluator(cfg, loop_config, device)

    batches = worker_batches(shard, cfg, rank, device, rows_per_rank=loop_config.get("num_rows", 0) // world,
                             consumed=st.step * cfg.optim.d_steps, in_memory=is_cached(shard))
    B, conditional = cfg.train.batch_size_per_worker, cfg.model.conditional
    images_per_step = B * world * cfg.optim.d_steps
    total_steps = _total_steps(cfg, world)
    z_fixed = torch.randn(GRID_SIZE, cfg.model.latent_dim, generator=torch.Generator().manual_seed(cfg.train.seed)).to(device)
    labels_fixed = (torch.arange(GRID_SIZE) % st.num_classes).to(device) if conditional else None
    report_every, ckpt_every, eval_every = _schedules(cfg, st.images_seen, evaluator is not None)
    good = st.snapshot()
    guard, report_pending = _NanGuard(device, st.G, st.D), False
    acc: dict[str, torch.Tensor] = {}
    n_acc, n_good, wait_s, t_report, t_start = 0, 0, 0.0, time.perf_counter(), time.perf_counter()
    t_forwarded = -math.inf  # when a report last went to the session (Ray Train / Tune)
    budget_s = cfg.train.max_minutes * 60 if cfg.train.max_minutes else None
    stop_reason = "completed"
    marks["loop_ready"] = time.time()

    # Fraction of train.max_minutes used, agreed by all ranks at each report: a learning-rate
    # schedule follows whichever length limit (kimg/steps or minutes) is nearer its end.
    time_progress = 0.0
    while st.step < total_steps:
        progress = max(st.step / total_steps if total_steps < 2**62 else 0.0, time_progress)
        for opt, lr in ((st.opt_g, cfg.optim.lr_g), (st.opt_d, cfg.optim.lr_d)):
            for group in opt.param_groups:
                group["lr"] = lr * lr_factor(cfg.optim.lr_schedule, progress)
        gen = torch.Generator(device).manual_seed(seed_for(cfg.train.seed, rank, st.step))
        augment = _augment_fn(cfg, st, gen)

        # (1) update D: maximise log D(x) + log(1 - D(G(z))) -- d_steps real batches, on logits;
        # (2) update G: maximise log D(G(z)) (non-saturating) through the frozen, unwrapped D.
        faults.maybe_die(st.step, rank)
        faults.maybe_poison_weight(G, st.step, rank)
        reals = []
        for _ in range(cfg.optim.d_steps):
            t0 = time.perf_counter()
            real, labels = next(batches)
            wait_s += time.perf_counter() - t0
            marks.setdefault("first_batch", time.time())
            if faults.nan_batch(st.step, rank):
                real = real * float("nan")
            reals.append((real, labels if conditional else None))
        n_z = cfg.optim.d_steps + (1 if cfg.optim.d_steps > 1 else 0)
        zs = [torch.randn(B, cfg.model.latent_dim, device=device, generator=gen) for _ in range(n_z)]
        guard.before_step()
        values, bad = train_step(G, D, st.opt_g, st.opt_d, reals, zs, cfg.loss, step=st.step, prec=prec,
                                 augment=augment, generator=gen)
        if "first_step" not in marks:  # start-up timing: startup.startup_breakdown reads timing.json
            marks["first_step"] = time.time()
            if run is not None:
                run.write_json("timing.json", marks)

        # (3) Bookkeeping on the device, no host sync: NaN guard, EMA, counters, running means.
        st.step += 1
        st.images_seen += images_per_step
        guard.after_step(bad)
        if st.ema is not None:
            st.ema.update(G, images_per_step, st.images_seen, skip=bad)
        for key, v in values.items():
            acc[key] = acc.get(key, 0) + torch.where(bad, 0.0, v.float())
        n_acc += 1

        is_last = st.step >= total_steps
        if not (report_pending or report_every.due(st.images_seen) or is_last):
            continue
        # A report, and with it a checkpoint, follows a good step only: a skipped step can leave
        # weights that hold the NaN which caused it. The guard's counters are read here: once per
        # report, and at each step only while a run of skipped steps holds a report back. A run of
        # nan_skip_limit skips, or one the last step ends in, rolls back to the last saved state.
        good_steps, bad_run = guard.read(st)
        n_good += good_steps
        report_pending = bad_run > 0
        if bad_run >= cfg.train.nan_skip_limit or (report_pending and is_last):
            _rollback(st, good, bad_run)
            guard, report_pending = _NanGuard(device, st.G, st.D), False
            report_every, ckpt_every, eval_every = _schedules(cfg, st.images_seen, evaluator is not None)
            acc, n_acc, n_good, wait_s, t_report = {}, 0, 0, 0.0, time.perf_counter()
            continue
        if report_pending:
            continue
        # --- report: collectives first, identical on every rank ---
        elapsed = time.perf_counter() - t_report
        stats = _reduce_stats(acc, n_good, device)
        used = (time.perf_counter() - t_start) / budget_s if budget_s is not None else 0.0
        since_forwarded = time.perf_counter() - t_forwarded
        agreed = dist.all_reduce_max(torch.tensor([used, since_forwarded], device=device, dtype=torch.float64)).tolist()
        time_progress = agreed[0]
        stop = time_progress >= 1.0
        is_last = is_last or stop
        if stop and st.step < total_steps:
            stop_reason = "max_minutes"
        if st.ada is not None and "r_t" in stats:
            st.ada.update(stats["r_t"], n_good * images_per_step)
        dist.average_buffers(st.G)
        dist.average_buffers(st.D)
        if st.ema is not None:
            st.ema.copy_buffers(st.G)
        row = {
            "step": st.step, "kimg": round(st.kimg, 4), **stats,
            "img_per_s": n_acc * images_per_step / max(elapsed, 1e-9),
            "data_wait_frac": wait_s / max(elapsed, 1e-9),
            "wall_s": time.perf_counter() - t_start,
            "lr_g": st.opt_g.param_groups[0]["lr"], "lr_d": st.opt_d.param_groups[0]["lr"],
            "nan_skips": st.nan_skips, "rollbacks": st.rollbacks,
        }
        if st.ada is not None:
            row["ada_p"] = st.ada.p
        if evaluator is not None and (eval_every.due(st.images_seen) or is_last):
            row.update(evaluator(st))
            if row.get("fid") is not None and (st.best_fid is None or row["fid"] < st.best_fid):
                st.best_fid = row["fid"]
        save = ckpt_every.due(st.images_seen) or is_last or "fid" in row
        # Every row goes to metrics.csv with a sample grid; the session gets checkpoints,
        # evaluations, the last row and otherwise at most one row per `min_report_interval_s`:
        # Ray Train's worker holds one unconsumed report and its controller takes it only every
        # health-check interval (2 s), so a faster report rate would block training (a fast GPU
        # at the default 2 kimg interval reports several times a second). Trackers get images
        # at the same rate (an image costs them a PNG encoding each). Agreed by all ranks above.
        forward = save or is_last or agreed[1] >= session.min_report_interval_s
        if run is not None:
            grid = _sample_grid(st, z_fixed, labels_fixed)
            png = encode_png(grid, compress_level=1)  # once, for both files
            run.write_bytes(f"samples/grid_{st.step:08d}.png", png)
            run.write_bytes("samples/latest.png", png)
            run.append_metrics(row)
            if "fid" in row:
                run.write_fid_plot()
            if tracker is not None:
                tracker.log(st.step, row, grid if forward else None)
        if forward:
            _report(session, row, st, cfg, save, is_last, stop_reason)
            t_forwarded = time.perf_counter()
        if save:
            good = st.snapshot()
        acc, n_acc, n_good, wait_s, t_report = {}, 0, 0, 0.0, time.perf_counter()
        if stop:
            break
    if tracker is not None:
        tracker.close()


def _checkpoints_on_disk(run_dir: str) -> list[str]:
    """The run's checkpoint folders, newest first; listed when the worker starts (local runs)."""
    if "://" in run_dir:
        return []
    return [str(p) for p in reversed(ckpt_io.list_checkpoints(run_dir))]


def _ckpt_step(path: str | None) -> int:
    m = re.match(r"^checkpoint_(\d+)$", os.path.basename(str(path).rstrip("/"))) if path else None
    return int(m.group(1)) if m else -1


def _restore(st: TrainState, restored, on_disk: list[str]) -> None:
    """Load the newest readable checkpoint; warn about each unreadable one and try the next.

    Ray's checkpoint first, except for folders on disk newer than it: Ray's controller learns of
    a reported checkpoint only when it next polls the worker (every ~2 s), so a worker killed
    just after reporting one is restarted with the previous one although the new one is on disk.
    `on_disk` lists the run's checkpoint folders newest first (a partial one fails to load).
    """
    import contextlib
    import warnings

    ray_path = restored.path if restored is not None else None
    ray_step = _ckpt_step(ray_path)
    same = (lambda p: os.path.realpath(p) == os.path.realpath(ray_path)) if ray_path else (lambda p: False)
    candidates = [contextlib.nullcontext(p) for p in on_disk if _ckpt_step(p) > ray_step and not same(p)]
    if restored is not None:
        candidates.append(restored.as_directory())
    candidates += [contextlib.nullcontext(p) for p in on_disk if _ckpt_step(p) <= ray_step and not same(p)]
    errors = []
    for cand in candidates:
        with cand as d:
            try:
                sd = ckpt_io.load_state(d)
            except ckpt_io.CheckpointError as e:
                errors.append(str(e))
                warnings.warn(f"{e}; trying the previous checkpoint", stacklevel=2)
                continue
        st.load_state_dict(sd)
        return
    if errors:
        raise ckpt_io.CheckpointError("no readable checkpoint to resume from: " + "; ".join(errors))


def _reduce_stats(acc: dict[str, torch.Tensor], n: int, device) -> dict[str, float]:
    if not acc:
        return {}
    keys = sorted(acc)
    vec = torch.stack([acc[k] for k in keys]).to(device) / max(n, 1)
    return dict(zip(keys, dist.all_reduce_mean(vec).tolist()))


class _NanGuard:
    """Undoes what a skipped (non-finite) step did to the buffers, and counts skipped steps, all on
    the device; the host reads the counts once per report.

    Every rank holds the same counts: the skip flag comes from the all-reduced gradient norm.
    """

    def __init__(self, device: torch.device, *nets: torch.nn.Module):
        # BatchNorm's running statistics (and spectral norm's vectors) move during the forward
        # passes, before the step knows its gradients are non-finite: a copy per step, put back
        # where the step was skipped. The copies are allocated once and filled by one foreach.
        self.buffers = [b for net in nets for b in dist.unwrap(net).buffers()]
        self.saved = [torch.empty_like(b) for b in self.buffers]
        zero = torch.zeros((), dtype=torch.int64, device=device)
        self.skips, self.good, self.run = zero.clone(), zero.clone(), zero.clone()

    @torch.no_grad()
    def before_step(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.saved, self.buffers)

    @torch.no_grad()
    def after_step(self, bad: torch.Tensor) -> None:
        for b, saved in zip(self.buffers, self.saved):
            torch.where(bad, saved, b, out=b)
        self.skips += bad
        self.good += ~bad
        self.run = (self.run + 1) * bad  # the current run of consecutive skipped steps

    def read(self, st: TrainState) -> tuple[int, int]:
        """Fold the skips into `st.nan_skips`; return (good steps since the last read, current run)."""
        skips, good, run = torch.stack([self.skips, self.good, self.run]).tolist()
        st.nan_skips += skips
        self.skips.zero_()
        self.good.zero_()
        return good, run


def _rollback(st: TrainState, good: dict, bad_steps: int) -> None:
    if st.rollbacks >= st.cfg.train.max_rollbacks:
        raise DivergenceError(
            f"training diverged: {bad_steps} consecutive steps with non-finite gradients at step {st.step} "
            f"after {st.rollbacks} rollback(s) (train.max_rollbacks={st.cfg.train.max_rollbacks}); "
            "try a lower optim.lr_d/lr_g, spectral norm or R1"
        )
    skips, rollbacks = st.nan_skips, st.rollbacks
    st.load_state_dict(good)
    st.nan_skips, st.rollbacks = skips, rollbacks + 1


def _augment_fn(cfg: Config, st: TrainState, gen: torch.Generator):
    if st.ada is not None:
        policy = cfg.augment.policy or "color,translation,cutout"
        p = st.ada.p
        return lambda x: diff_augment(x, policy, p=p, generator=gen) if p > 0 else x
    if cfg.augment.policy:
        return lambda x: diff_augment(x, cfg.augment.policy, p=1.0, generator=gen)
    return None


@torch.no_grad()
def _sample_grid(st: TrainState, z: torch.Tensor, labels) -> np.ndarray:
    G = st.sampler()
    was_training = G.training
    G.eval()
    images = G(z, labels)
    G.train(was_training)
    return image_grid(to_uint8(images), nrow=8)


def _report(session, row: dict, st: TrainState, cfg: Config, save: bool, is_last: bool, stop_reason: str) -> None:
    metrics = {**row, "done": is_last, "stop_reason": stop_reason if is_last else ""}
    if not save:
        session.report(metrics)
        return
    name = f"checkpoint_{st.step:08d}"
    # Ray ranks checkpoints by this key; one without it would score as the best (Ray treats a
    # missing metric as -inf, negated for "min"), so a checkpoint between evaluations scores +inf:
    # the best evaluated checkpoint is kept, and Ray always keeps the latest one.
    metrics["checkpoint_fid"] = row["fid"] if row.get("fid") is not None else float("inf")
    if dist.rank() != 0:
        session.report(metrics, None, name)
        return
    state = st.state_dict()
    state["fid"] = row.get("fid")
    with ckpt_io.staging_dir() as tmp:
        ckpt_io.save(tmp, state, cfg, st.sampler().state_dict())
        try:
            session.report(metrics, tmp, name)
        except OSError as e:  # Ray's copy into the run folder: a full or read-only disk, lost access
            raise OSError(e.errno, f"storing {name} in the run folder failed ({e.strerror or e}); "
                          "earlier checkpoints are kept, --resume skips a partial one") from e


def _record_workers(run: RunFolder | None, world: int, cores: list[int] | None) -> None:
    """Rank 0 writes workers.json: the node each rank runs on (checks SPREAD placement) and the
    cores its compute threads are pinned to (null: not pinned)."""
    import ray

    mine = (ray.get_runtime_context().get_node_id(), cores)
    ranks = [mine]
    if dist.is_distributed():
        import torch.distributed as torch_dist

        ranks = [None] * world
        torch_dist.all_gather_object(ranks, mine)
    if run is not None:
        run.write_json("workers.json", {"world_size": world, "nodes": [r[0] for r in ranks],
                                        "cores": [r[1] for r in ranks], "pid": os.getpid()})


def _make_tracker(run_dir: str, cfg: Config, step: int):
    try:
        from ganray.tracking import Tracker
    except ImportError:
        return None
    return Tracker(run_dir, cfg, resume_step=step)


def _make_evaluator(cfg: Config, loop_config: dict, device):
    """A callable(state) -> metrics dict, or None when evaluation is off."""
    if not loop_config.get("eval"):
        return None
    from ganray.metrics.training import make_evaluator

    return make_evaluator(cfg, loop_config["eval"], device)
