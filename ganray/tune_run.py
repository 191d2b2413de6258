"""Driver side of `ganray tune`: scheduler, concurrency, Tuner, results tables and plot."""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

from ganray.config import Config, ConfigError
from ganray.raypg import tune_cleanup_callback
from ganray.runfolder import RunFolder, storage_root
from ganray.tune import GANStopper, apply_params, to_tune_space, trial_driver, validate_space

DRIVER_CPU = 0.1  # a trial's driver only waits on its Ray Train trainer


def tune_base_config(cfg: Config, grace_kimg: float | None = None) -> Config:
    """Trials report only at evaluations: Tune's schedulers need `fid` in every result.

    `grace_kimg` (ASHA's first rung) must come with an evaluation: the interval shrinks to it.
    """
    cfg = cfg.model_copy(deep=True)
    if cfg.eval.features == "none":
        raise ConfigError("ganray tune stops trials on FID: set eval.features to auto, classifier or inception")
    every = cfg.eval.every_kimg or cfg.train.report_every_kimg
    if cfg.train.kimg is not None:
        every = min(every, cfg.train.kimg / 6)  # enough evaluations for ASHA's rungs and plateaus
    if grace_kimg is not None:
        if not grace_kimg > 0:
            raise ConfigError(f"--grace-kimg must be > 0, got {grace_kimg}")
        if cfg.train.kimg is not None and grace_kimg >= cfg.train.kimg:
            raise ConfigError(f"--grace-kimg {grace_kimg:g} is not below train.kimg {cfg.train.kimg:g}: "
                              "ASHA would never stop a trial early")
        every = min(every, grace_kimg)
    cfg.eval.every_kimg = every
    cfg.train.report_every_kimg = every
    cfg.train.checkpoint_every_kimg = every
    return cfg


def max_concurrent(workers_per_trial: int, use_gpu: bool) -> int:
    import ray

    res = ray.cluster_resources()
    if use_gpu:
        return max(1, int(res.get("GPU", 0) // workers_per_trial))
    # Each trial: K worker CPUs + its driver's fraction; keep one CPU for Ray Data.
    return max(1, int((res.get("CPU", 1) - 1) // (workers_per_trial + DRIVER_CPU)))


# PBT and multi-worker trials: Tune copies checkpoints it was given through tune.report. A trial
# that runs a Ray Train trainer reports through TuneReportCallback, which passes metrics only, so PBT's
# exploit step would find no checkpoint to copy. ganray therefore runs PBT trials with one worker
# inside the trial process (ganray.session.TuneSession); multi-worker trials use ASHA or FIFO.


def trial_resources(inprocess: bool, use_gpu: bool) -> dict:
    """What one trial reserves: a PBT trial trains itself (1 CPU, and its GPU); any other trial
    only drives a Ray Train trainer, whose workers reserve their own."""
    if inprocess:
        return {"cpu": 1, "gpu": 1} if use_gpu else {"cpu": 1}
    return {"cpu": DRIVER_CPU}


def pbt_population_limit(streams: bool, use_gpu: bool) -> int:
    """How many PBT trials may exist at once; 0: all of them.

    PBT's population is the trials that exist together: Tune runs those the cluster fits and
    gives the rest turns (it pauses a trial at a perturbation point while others wait), and a
    worse trial can copy only a trial that has not finished. So every trial is created at once,
    except when the dataset streams and the trials could take every CPU: Ray Data's tasks run
    outside the trials' reservations and would wait for a free CPU for ever. Then only as many
    trials exist as leave one CPU free, as for other schedulers.
    """
    import ray

    cpus = ray.cluster_resources().get("CPU", 1)
    if not streams or _slots(use_gpu) < cpus:  # fewer GPUs than CPUs: the trials leave CPUs free
        return 0
    return max(1, int(cpus - 1))


def trial_threads(running: int, workers_per_trial: int) -> int:
    """Torch threads per worker when the search leaves train.threads_per_worker unset: a node's
    cores shared by the workers of the trials running on it at once. A single run's default
    (every core of the node for each worker on it) would oversubscribe: 13 one-worker trials on
    a 16-core node would run 208 threads. Nodes are taken as equal (the cluster's CPUs / nodes)."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU")] or [None]
    node_cpus = int(ray.cluster_resources().get("CPU", 1) / len(nodes))
    per_node = math.ceil(max(1, running) / len(nodes))
    return max(1, node_cpus // (per_node * workers_per_trial))


def population(space: dict, num_samples: int) -> int:
    """Trials a search creates: num_samples for every point of the grid."""
    return num_samples * math.prod(len(spec["grid"]) for spec in space.values() if "grid" in spec)


def shares_inputs(space: dict) -> bool:
    """Whether every trial reads the same data and evaluates the same way (no data./eval. key searched)."""
    return not any(key.split(".", 1)[0] in ("data", "eval") for key in space)


def make_scheduler(name: str, max_kimg: float, grace_kimg: float, space: dict):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    if name == "asha":
        # Rungs at grace, 3 x grace, 9 x grace ...: a third of the trials go on at each rung, so
        # in theory a search costs ~1/3 of running every trial to the end (factor 2 cannot go
        # below 37.5%). The grace period is the first evaluation: it must come late enough for
        # FID to rank trials (BENCHMARKS.md, "ASHA + early stopping").
        return ASHAScheduler(time_attr="kimg", max_t=max_kimg, grace_period=grace_kimg, reduction_factor=3)
    if name == "pbt":
        # A grid key starts one trial per value and is mutated among its values, like a choice.
        mutations = {k: v["grid_search"] if isinstance(v, dict) else v for k, v in to_tune_space(space).items()}
        return PopulationBasedTraining(time_attr="kimg", perturbation_interval=grace_kimg,
                                       hyperparam_mutations=mutations)
    if name == "fifo":
        return FIFOScheduler()
    raise ConfigError(f"unknown scheduler {name!r}; choose asha, pbt or fifo")


def run_tune(base: Config, space: dict, stopping: dict, *, name: str, num_samples: int = 4,
             scheduler: str = "asha", max_concurrent_trials: int | None = None, workers_per_trial: int = 1,
             resume: bool = False, searcher: str | None = None, seed: int | None = None,
             grace_kimg: float | None = None, verbose: int = 1) -> dict[str, Any]:
    """Run (or with `resume`, continue) a search; returns the summary plus the results table.

    `grace_kimg`: ASHA's first rung (default: the first evaluation). A trial is ranked there on
    its FID, so it must come late enough for FID to mean something (BENCHMARKS.md).
    """
    from ray import tune

    from ganray import affinity
    from ganray.data import is_cached
    from ganray.instance import ensure_ray, owns_ray_instance
    from ganray.launch import _use_gpu, load_inputs

    inprocess = scheduler == "pbt"
    if inprocess and workers_per_trial != 1:
        raise ConfigError("--scheduler pbt runs single-worker trials (the worker lives in the trial so Tune can "
                          "copy its checkpoints); use --workers-per-trial 1, or asha/fifo for multi-worker trials")
    if inprocess and max_concurrent_trials:
        raise ConfigError("--max-concurrent does not apply to --scheduler pbt: its population is every trial "
                          "(--num-samples), created at once so that each can copy the others; Tune runs as many "
                          "as the cluster fits and PBT gives the rest turns")
    if inprocess and not shares_inputs(space):
        raise ConfigError("--scheduler pbt cannot search data.* or eval.* keys: a trial copies another's checkpoint "
                          "and goes on under its own values, so every trial must train on the same data and be "
                          "ranked by the same evaluation; search them with asha or fifo")
    base = base.model_copy(deep=True)
    base.train.workers = workers_per_trial
    base = tune_base_config(base, grace_kimg)
    validate_space(space, base)
    ensure_ray(workers_per_trial)
    # Resolved here: the trials' drivers are Ray processes, which do not own the instance.
    base.train.cpu_affinity = "on" if affinity.resolve(base.train.cpu_affinity, owns_ray_instance()) else "off"
    use_gpu = _use_gpu(base)
    root = storage_root(base.run.out)
    exp_dir = f"{root}/{name}"
    runs_dir = f"{exp_dir}/runs"
    stopper = GANStopper(**stopping)
    t0 = time.time()
    # The dataset and the evaluation's real statistics, loaded once for the whole experiment when
    # no trial changes them (~6 s less start-up per trial, BENCHMARKS.md); the trials get them
    # through the object store.
    inputs = load_inputs(base) if shares_inputs(space) else None
    trainable = tune.with_resources(tune.with_parameters(trial_driver, inputs=inputs),
                                    trial_resources(inprocess, use_gpu))
    if resume:
        if not Path(exp_dir).is_dir():
            raise ConfigError(f"--resume: no experiment named {name!r} under {root}")
        tuner = tune.Tuner.restore(exp_dir, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        if Path(exp_dir).exists():
            raise ConfigError(f"experiment folder {exp_dir} exists; pass --resume or choose another --name")
        max_kimg = base.train.kimg or 1e9
        param_space = {**to_tune_space(space), "__base__": base.to_dict(), "__runs__": runs_dir,
                       "__inprocess__": inprocess}
        if inprocess:
            concurrency = pbt_population_limit(not is_cached(inputs.dataset), use_gpu)
            if concurrency:
                warnings.warn(f"--scheduler pbt: the dataset streams, and Ray Data needs a CPU the trials do not "
                              f"hold, so only {concurrency} trial(s) exist at once: each population is that "
                              f"many, and later trials cannot copy finished ones", stacklevel=2)
        else:
            concurrency = max_concurrent_trials or max_concurrent(workers_per_trial, use_gpu)
        running = min(population(space, num_samples), concurrency or _slots(use_gpu))
        param_space["__threads__"] = trial_threads(running, workers_per_trial)
        sched = make_scheduler(scheduler, max_kimg, grace_kimg or base.eval.every_kimg, space)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric="fid", mode="min", num_samples=num_samples,
                # PBT restarts a trial at every exploit, and at every turn when the population
                # outnumbers the cluster: in the same process, not a new one (BENCHMARKS.md, PBT).
                # A trial that does not end within Tune's timeout gets a new process anyway.
                reuse_actors=inprocess,
                scheduler=sched,
                search_alg=_searcher(searcher, seed, concurrency),
            ),
            run_config=tune.RunConfig(
                name=name, storage_path=root, stop=stopper.as_tune_stopper(), verbose=verbose,
                callbacks=[tune_cleanup_callback()],
                failure_config=tune.FailureConfig(max_failures=0),
                progress_reporter=tune.CLIReporter(
                    parameter_columns=list(space), metric_columns=["kimg", "fid", "loss_d", "loss_g"],
                    max_report_frequency=15),
            ),
        )
    grid = tuner.fit()
    summary = write_results(grid, base, space, stopper, exp_dir, time.time() - t0, scheduler)
    if not resume and scheduler == "pbt":
        summary["pbt_perturbations"] = getattr(sched, "_num_perturbations", None)
    return summary


def _slots(use_gpu: bool) -> int:
    """PBT trials the cluster runs at once: one per GPU, or one per CPU."""
    import ray

    res = ray.cluster_resources()
    return max(1, int(min(res.get("GPU", 0), res.get("CPU", 1)) if use_gpu else res.get("CPU", 1)))


def _searcher(name: str | None, seed: int | None, max_concurrent: int):
    """The search algorithm, limited to `max_concurrent` live trials.

    The limit is set here, not through TuneConfig(max_concurrent_trials): Tune applies that only
    to a Searcher and silently ignores it for a BasicVariantGenerator passed in, which then
    starts every trial at once.
    """
    if not name or name == "random":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent)
    if name == "optuna":
        try:
            from ray.tune.search import ConcurrencyLimiter
            from ray.tune.search.optuna import OptunaSearch
        except ImportError as e:
            raise ConfigError("--searcher optuna needs the extra: pip install 'ganray[optuna]'") from e
        return ConcurrencyLimiter(OptunaSearch(seed=seed), max_concurrent=max_concurrent)
    raise ConfigError(f"unknown searcher {name!r}; choose random or optuna")


def write_results(grid, base: Config, space: dict, stopper: GANStopper, exp_dir: str, wall_s: float,
                  scheduler: str = "asha") -> dict:
    import pandas as pd

    rows = []
    for res in grid:
        cfg_params = {k: v for k, v in (res.config or {}).items() if not k.startswith("__")}
        df = res.metrics_dataframe
        fids = df["fid"].dropna().tolist() if df is not None and "fid" in df else []
        m = res.metrics or {}
        trial_id = m.get("trial_id") or Path(res.path).name
        # Why the trial ended: a ganray stopper, an error, its own end (completed/max_minutes, which
        # the training loop reports in its last result), else the scheduler stopped it.
        reason = stopper.reasons.get(trial_id)
        if reason is None:
            reason = "error" if res.error else (m.get("stop_reason") or scheduler)
        rows.append({
            "trial_id": trial_id, **cfg_params,
            "best_fid": min(fids) if fids else math.nan,
            "last_fid": fids[-1] if fids else math.nan,
            "kimg": m.get("kimg", 0.0),
            "stop_reason": reason,
            "wall_s": m.get("time_total_s", 0.0),
            "checkpoint": _checkpoint_of(res, m),
            "run_dir": f"{exp_dir}/runs/{trial_id}",
            "curve": ";".join(f"{k:g}:{f:g}" for k, f in zip(df["kimg"], df["fid"])) if fids else "",
        })
    table = pd.DataFrame(rows).sort_values("best_fid", na_position="last")
    out = RunFolder(exp_dir)
    out.write_text("results.csv", table.to_csv(index=False))
    table.to_parquet(f"{exp_dir}/results.parquet", index=False)
    best_row = table.iloc[0] if len(table) else None
    summary = {"trials": len(table), "wall_s": wall_s, "best_fid": None, "best_trial": None,
               "total_trial_s": float(table["wall_s"].sum()) if len(table) else 0.0,
               "total_kimg": float(table["kimg"].sum()) if len(table) else 0.0}
    if best_row is not None and not math.isnan(best_row["best_fid"]):
        best_cfg = apply_params(base, {k: best_row[k] for k in space})
        best_cfg.run.name = None
        out.write_text("best_config.yaml", yaml.safe_dump(_plain(best_cfg.to_dict()), sort_keys=False))
        summary.update(best_fid=float(best_row["best_fid"]), best_trial=best_row["trial_id"])
    _plot_trials(out, rows)
    out.write_json("summary.json", summary)
    return summary | {"table": table, "exp_dir": exp_dir}


def _checkpoint_of(res, metrics: dict) -> str:
    """The trial's latest checkpoint: Tune's own (PBT trials), else the one Ray Train reported."""
    if getattr(res, "checkpoint", None) is not None:
        return res.checkpoint.path
    return metrics.get("checkpoint_path") or ""


def _plain(d):
    if isinstance(d, dict):
        return {k: _plain(v) for k, v in d.items()}
    if hasattr(d, "item"):
        return d.item()
    return d


def _plot_trials(out: RunFolder, rows: list[dict]) -> None:
    from ganray.runfolder import plot_curves

    series = {}
    for r in rows:
        pts = [tuple(map(float, p.split(":"))) for p in r["curve"].split(";") if p]
        if pts:
            series[r["trial_id"]] = pts
    if series:
        out.write_png("trials.png", plot_curves(series, ylabel="FID"))


def experiment_name(name: str | None) -> str:
    return name or f"tune-{time.strftime('%Y%m%d-%H%M%S')}"


