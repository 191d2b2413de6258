"""Driver side of a training run: the dataset, the Ray Train trainer (ganray.trainer), the
summary. The Ray instance it runs on comes from ganray.instance.

Nothing here runs on the workers. The progress line reads the run folder's metrics.csv,
which rank 0 writes, so a run starts no process of its own beside Ray Train's.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ganray import affinity
from ganray.config import Config
from ganray.instance import ensure_ray, owns_ray_instance, sigterm_as_interrupt
from ganray.runfolder import RunFolder, run_path, storage_root
from ganray.startup import process_start, startup_breakdown


class RunError(RuntimeError):
    """A run could not start or failed; the message is meant for the user as is."""


def default_name(cfg: Config) -> str:
    src = cfg.data.source.rstrip("/").split("/")[-1] or "data"
    src = "".join(c if c.isalnum() or c in "._-" else "-" for c in src)[:40]
    return f"{src}-{time.strftime('%Y%m%d-%H%M%S')}"


def threads_per_worker(cfg: Config) -> int:
    if cfg.train.threads_per_worker:
        return cfg.train.threads_per_worker
    return max(1, (os.cpu_count() or 1) // cfg.train.workers)


def _use_gpu(cfg: Config) -> bool:
    import ray

    if cfg.train.use_gpu is not None:
        return cfg.train.use_gpu
    return ray.cluster_resources().get("GPU", 0) >= 1


def _format_progress(row: dict, total_kimg: float | None) -> str:
    kimg = row.get("kimg", 0.0)
    of = f"/{total_kimg:g}" if total_kimg else ""
    parts = [f"kimg {kimg:.2f}{of}", f"step {row.get('step', 0)}", f"{row.get('img_per_s', 0):.0f} img/s",
             f"loss D {row.get('loss_d', float('nan')):.3f} G {row.get('loss_g', float('nan')):.3f}",
             f"D(x) {row.get('d_real', float('nan')):+.2f} D(G(z)) {row.get('d_fake', float('nan')):+.2f}"]
    if row.get("fid") is not None:
        parts.append(f"FID {row['fid']:.2f}")
    return " | ".join(parts)


@dataclass
class Prepared:
    cfg: Config
    name: str
    run_dir: str
    dataset: Any
    info: Any
    loop_config: dict


@dataclass
class SharedInputs:
    """What every run of one data + evaluation config needs: the materialised dataset, its
    description and the evaluation's real statistics (object refs). A Tune experiment loads them
    once and hands them to every trial instead of each trial loading its own."""
    data: Any   # the DataConfig they were built from, checked against each run's
    eval: Any
    dataset: Any
    info: Any
    eval_info: dict | None


def load_inputs(cfg: Config) -> SharedInputs:
    from ganray.data import load_dataset

    _preserve_data_order()
    dataset, info = load_dataset(cfg.data)
    return SharedInputs(cfg.data, cfg.eval, dataset, info, _prepare_eval(cfg, info))


def prepare(cfg: Config, *, resume: bool = False, inputs: SharedInputs | None = None) -> Prepared:
    """Everything checked before any worker starts: names, folders, data, evaluation.

    `inputs`: the dataset and evaluation statistics already loaded for this data and eval config
    (a Tune experiment's trials share them); loaded here otherwise.
    """
    from ganray.data import load_dataset

    name = cfg.run.name or default_name(cfg)
    cfg = cfg.model_copy(deep=True)
    cfg.run.name = name
    run_dir = run_path(cfg.run.out, name)
    local = "://" not in run_dir
    exists = local and any(Path(run_dir).glob("checkpoint_*")) or (local and (Path(run_dir) / "metrics.csv").exists())
    if exists and not resume:
        raise RunError(f"run folder {run_dir} already holds a run; pass --resume to continue it or choose another --name")
    if resume and local and not Path(run_dir).is_dir():
        raise RunError(f"--resume: no run named {name!r} under {storage_root(cfg.run.out)}")
    if resume and local:
        _set_aside_unreadable_ray_state(Path(run_dir))
    _preserve_data_order()
    marks = {"prepare_start": time.time()}
    if inputs is not None and (inputs.data != cfg.data or inputs.eval != cfg.eval):
        raise RunError("internal: shared inputs were loaded for another data or eval config")
    dataset, info = (inputs.dataset, inputs.info) if inputs is not None else load_dataset(cfg.data)
    marks["dataset_ready"] = time.time()
    num_classes = cfg.data.num_classes or info.num_classes
    if cfg.model.conditional == "auto":
        cfg.model.conditional = bool(num_classes)
    if cfg.model.conditional and not num_classes:
        raise RunError(f"model.conditional=true needs labels, but data {cfg.data.source!r} has none")
    if info.num_rows < cfg.train.batch_size_per_worker * cfg.train.workers:
        raise RunError(
            f"data {cfg.data.source!r} has {info.num_rows} images, fewer than workers x batch_size_per_worker "
            f"= {cfg.train.workers} x {cfg.train.batch_size_per_worker}"
        )
    loop_config = {
        "config": cfg.to_dict(),
        "run_dir": run_dir,
        "num_classes": num_classes,
        "num_rows": info.num_rows,
        "threads": threads_per_worker(cfg),
        "cpu_affinity": affinity.resolve(cfg.train.cpu_affinity, owns_ray_instance()),
        "fallback_checkpoints": _local_checkpoints(run_dir) if resume else [],
        "eval": inputs.eval_info if inputs is not None else _prepare_eval(cfg, info),
        # Driver-side start-up timestamps (time.time()); rank 0 adds its own and writes timing.json.
        "startup_marks": marks,
    }
    marks["prepared"] = time.time()
    return Prepared(cfg, name, run_dir, dataset, info, loop_config)


def _preserve_data_order() -> None:
    """load_dataset materialises blocks on the driver: without preserve_order they are stored in
    task-completion order, so the seeded data order (and a resumed run) differs from run to run."""
    import ray.data

    ray.data.DataContext.get_current().execution_options.preserve_order = True


RAY_TRAIN_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's list of a run's checkpoints


def _set_aside_unreadable_ray_state(run_dir: Path) -> None:
    """Ray Train writes its checkpoint list in place, not atomically: a disk that fills up at
    that moment leaves it empty, and Ray then refuses to resume the run
    (CheckpointManagerInitializationError). ganray finds the checkpoints on disk itself (the newest
    readable one is restored), so an unreadable list is moved aside and Ray starts a new one."""
    snap = run_dir / RAY_TRAIN_SNAPSHOT
    try:
        json.loads(snap.read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError) as e:
        aside = snap.with_name(snap.name + ".unreadable")
        snap.replace(aside)
        print(f"ganray: Ray Train's checkpoint list {snap} was unreadable ({type(e).__name__}); moved to "
              f"{aside.name}, resuming from the newest readable checkpoint on disk", file=sys.stderr)


def _local_checkpoints(run_dir: str) -> list[str]:
    from ganray.checkpoint import list_checkpoints

    return [str(p) for p in reversed(list_checkpoints(run_dir))]


def _prepare_eval(cfg: Config, info) -> dict | None:
    if cfg.eval.features == "none":
        return None
    try:
        from ganray.metrics.training import prepare_eval
    except ImportError:
        return None
    return prepare_eval(cfg, info)


def build_trainer(p: Prepared, *, callbacks=()):
    import ray.train

    from ganray.backend import ProcessGroupConfig
    from ganray.faults import forwarded_env
    from ganray.trainer import GanTrainer, train_worker

    cfg = p.cfg
    use_gpu = _use_gpu(cfg)
    evaluating = p.loop_config["eval"] is not None
    splits = worker_splits(p.dataset, cfg.train.workers)
    if splits is not None:
        data = {}
        loop_config = {**p.loop_config, "dataset_splits": splits}
    else:
        # Ordered execution: with one worker the data order is reproducible, so a resumed run
        # continues bit-exactly where an uninterrupted one would be.
        data = {"datasets": {"train": p.dataset},
                "dataset_config": ray.train.DataConfig(execution_options=_ordered())}
        loop_config = p.loop_config
    return GanTrainer(
        train_worker,
        placement_group_cleaner=not owns_ray_instance(),
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.train.workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": 1, **({"GPU": 1} if use_gpu else {})},
            placement_strategy=cfg.train.placement_strategy,
        ),
        backend_config=ProcessGroupConfig(backend="nccl" if use_gpu else "gloo"),
        **data,
        run_config=ray.train.RunConfig(
            name=p.name,
            storage_path=storage_root(cfg.run.out),
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.train.keep_checkpoints,
                checkpoint_score_attribute="checkpoint_fid" if evaluating else None,
                checkpoint_score_order="min",
            ),
            callbacks=list(callbacks),
            worker_runtime_env={"env_vars": forwarded_env()} if forwarded_env() else None,
        ),
    )


def worker_splits(dataset, workers: int) -> list | None:
    """Each worker's part of cached data (CachedRows or a MaterializedDataset, data.is_cached):
    `workers` equal, disjoint splits, made here on the driver and handed over in the loop
    config; None for a streaming dataset, which goes to Ray Train's own streaming split.

    A fixed split starts no process and costs nothing per epoch, where Ray Train's `datasets=`
    starts Ray Data's split coordinator, an actor that imports Ray Data and runs a streaming
    executor beside the training workers (a Tune trial started 3.8 s faster without it and the
    in-memory epochs, BENCHMARKS.md). Every rank also reads the same rows in every run, so a
    multi-worker resume continues exactly.
    """
    from ganray.data import is_cached, split_cached

    return split_cached(dataset, workers) if is_cached(dataset) else None


def _ordered():
    from ray.data import ExecutionOptions

    return ExecutionOptions(preserve_order=True)


def describe_failure(err: BaseException) -> str:
    """Name the failing rank(s) and the original exception, not only Ray's wrapper."""
    failures = getattr(err, "worker_failures", None)
    if failures is None and getattr(err, "__cause__", None) is not None:
        failures = getattr(err.__cause__, "worker_failures", None)
    if failures:
        lines = []
        for rank, exc in sorted(failures.items()):
            cause = getattr(exc, "cause", None) or exc
            msg = str(cause).strip().splitlines()
            lines.append(f"worker rank {rank}: {type(cause).__name__}: {msg[-1] if msg else ''}")
        return "training failed\n  " + "\n  ".join(lines)
    text = str(err).strip().splitlines()
    where = " (Ray Train's controller, which keeps the run's state in the run folder)" if type(err).__name__ == "ControllerError" else ""
    return f"training failed{where}: {type(err).__name__}: {text[-1] if text else ''}"


PROGRESS_POLL_S = 2.0  # the progress line's reads of metrics.csv: as often as Ray Train takes reports


def run_training(cfg: Config, *, resume: bool = False, progress: bool = True, address: str | None = None) -> dict:
    """Train; write summary.json; return the summary. Raises RunError on failure."""
    t_cmd = time.time()
    ensure_ray(cfg.train.workers, address=address)
    sigterm_as_interrupt()
    t_ray = time.time()
    p = prepare(cfg, resume=resume)
    marks = p.loop_config["startup_marks"]
    marks.update(process_start=process_start(), cmd=t_cmd, ray_ready=t_ray)
    run = RunFolder(p.run_dir)
    run.write_text("config.yaml", p.cfg.to_yaml())
    trainer = build_trainer(p)
    marks["fit_start"] = time.time()
    outcome: dict[str, Any] = {}

    def _fit():
        try:
            outcome["result"] = trainer.fit()
        except BaseException as e:  # reported by the main thread
            outcome["error"] = e

    thread = threading.Thread(target=_fit, daemon=True)
    thread.start()
    # The newest row of metrics.csv every PROGRESS_POLL_S, and once more at the end. Before,
    # Ray Train's controller forwarded reports to a queue actor: one more process that woke
    # 100 times a second on the cores the workers use (BENCHMARKS.md, change log).
    shown, total_kimg = None, p.cfg.train.kimg
    while True:
        thread.join(PROGRESS_POLL_S)
        over = not thread.is_alive()
        row = run.newest_metrics() if progress else None
        if row is not None and row != shown:
            shown = row
            line = _format_progress(row, total_kimg)
            sys.stdout.write("\r" + line[:200].ljust(120) if sys.stdout.isatty() else line + "\n")
            sys.stdout.flush()
        if over:
            break
    if progress and sys.stdout.isatty():
        sys.stdout.write("\n")
    summary = _summary(p, outcome, t_cmd, run)
    try:
        run.write_json("summary.json", summary)
    except OSError as e:  # a full or read-only disk: say so, but never instead of the training error
        note = f"cannot write {e.filename}: {e.strerror}"
        raise RunError(f"{describe_failure(outcome['error'])}\n  {note}" if "error" in outcome else note) from None
    if "error" in outcome:
        raise RunError(describe_failure(outcome["error"]))
    return summary


def _kept_checkpoint(run_dir: str):
    """The latest checkpoint Ray Train registered for the run (its snapshot in the run folder),
    or None: a failed fit() returns no Result."""
    from ray.train import Result

    try:
        return Result.from_path(run_dir).checkpoint
    except Exception:  # noqa: BLE001 - none yet, or a record a full disk left unreadable: name none
        return None


def _summary(p: Prepared, outcome: dict, t_cmd: float, run: RunFolder) -> dict:
    """summary.json: from metrics.csv's rows (every row rank 0 wrote, so a failed run's steps
    count up to its last row) and, after a finished fit, Ray Train's result (stop reason, the
    checkpoints it kept); after a failed one, the run folder's record of Ray Train's checkpoints."""
    result = outcome.get("result")
    run.load_metrics(None)
    last = {**(run.rows[-1] if run.rows else {}), **((result.metrics or {}) if result is not None else {})}
    ckpt = result.checkpoint if result is not None else _kept_checkpoint(p.run_dir)
    final = ckpt.path if ckpt is not None else None
    best = None
    if result is not None and getattr(result, "best_checkpoints", None):
        scored = [(m.get("fid"), c.path) for c, m in result.best_checkpoints if m.get("fid") is not None]
        best = min(scored)[1] if scored else None
    fids = [r["fid"] for r in run.rows if isinstance(r.get("fid"), (int, float))]
    workers = json.loads((run.read_bytes("workers.json") or b"{}").decode() or "{}")
    wall = time.time() - t_cmd
    kimg = float(last.get("kimg", 0.0))
    train_s = float(last.get("wall_s", 0.0)) or wall
    return {
        "name": p.name,
        "data": p.cfg.data.source,
        "status": "failed" if "error" in outcome else ("stopped" if last.get("stop_reason") == "max_minutes" else "finished"),
        "stop_reason": "error" if "error" in outcome else last.get("stop_reason", "completed"),
        "error": describe_failure(outcome["error"]) if "error" in outcome else None,
        "steps": int(last.get("step", 0)),
        "kimg": kimg,
        "wall_s": wall,
        "train_s": train_s,
        "img_per_s": kimg * 1000 / train_s if train_s else 0.0,
        "best_fid": min(fids) if fids else None,
        "best_checkpoint": best or final,
        "final_checkpoint": final,
        "worker_nodes": workers.get("nodes", []),
        "worker_cores": workers.get("cores", []),
        "run_dir": p.run_dir,
        "startup": startup_breakdown(json.loads((run.read_bytes("timing.json") or b"{}").decode() or "{}")),
    }
