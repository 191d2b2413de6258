"""Hyperparameter search: search spaces, GAN-aware stoppers, the per-trial driver, results.

Each Tune trial is a full ganray run: a small driver function that builds a Ray Train
trainer (ganray.trainer.GanTrainer) with K workers and forwards its reports to Tune with
TuneReportCallback (Ray Train V2's integration). The trial's run is named after the trial
id, so a restored experiment resumes each unfinished trial's Ray Train run from its own
latest checkpoint.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from ganray.config import Config, ConfigError, from_dict, read_yaml_mapping

DISTRIBUTIONS = ("loguniform", "uniform", "choice", "grid", "randint")

# Built-in space for the DCGAN preset: the knobs Lucic et al. (2018) found to matter most.
DEFAULT_SPACE = {
    "optim.lr_g": {"loguniform": [5e-5, 1e-3]},
    "optim.lr_d": {"loguniform": [5e-5, 1e-3]},
    "optim.beta1": {"choice": [0.0, 0.5]},
    "optim.d_steps": {"choice": [1, 2]},
    "loss.kind": {"choice": ["nonsaturating", "hinge"]},
    "ema.half_life_kimg": {"choice": [0.5, 2.0]},
}

DEFAULT_STOPPING = {
    "patience": 4,          # evaluations without a relative FID improvement of min_delta
    "min_delta": 0.01,
    "fid_ceiling": None,    # stop when FID stays above this after warmup_kimg
    "warmup_kimg": 0.0,
    "d_gap": 12.0,          # mean D(x) - D(G(z)) logit gap meaning "D has won"
    "d_gap_reports": 3,     # ... for this many consecutive reports
    "target_fid": None,     # stop the whole experiment once any trial reaches it
}


def load_search_file(path: str | None) -> tuple[dict, dict]:
    """(space, stopping) from a YAML file: either {space: ..., stopping: ...} or a flat space."""
    if path is None:
        return dict(DEFAULT_SPACE), dict(DEFAULT_STOPPING)
    doc = read_yaml_mapping(path, "search file")
    space = doc.get("space", {k: v for k, v in doc.items() if k != "stopping"})
    stopping = {**DEFAULT_STOPPING, **(doc.get("stopping") or {})}
    unknown = set(stopping) - set(DEFAULT_STOPPING)
    if unknown:
        raise ConfigError(f"search file {path!r}: unknown stopping key(s) {sorted(unknown)}")
    return space, stopping


def validate_space(space: dict, base: Config) -> None:
    """Reject unknown keys and malformed distributions before Ray starts, naming the key."""
    d = base.to_dict()
    if not space:
        raise ConfigError("the search space is empty")
    for key, spec in space.items():
        section, _, name = key.partition(".")
        if section not in d or name not in d[section]:
            raise ConfigError(f"search space: {key}: unknown config key")
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            raise ConfigError(f"search space: {key}: expected one of {{{', '.join(DISTRIBUTIONS)}}}: [...]")
        kind, args = next(iter(spec.items()))
        if not isinstance(args, list) or not args:
            raise ConfigError(f"search space: {key}: {kind} takes a non-empty list")
        if kind in ("loguniform", "uniform", "randint") and len(args) != 2:
            raise ConfigError(f"search space: {key}: {kind} takes [low, high]")
        values = args if kind in ("choice", "grid") else args[:1]
        for v in values:  # each candidate value must itself be a valid config value
            apply_params(base, {key: v})


def to_tune_space(space: dict) -> dict:
    from ray import tune

    makers = {
        "loguniform": lambda a: tune.loguniform(float(a[0]), float(a[1])),
        "uniform": lambda a: tune.uniform(float(a[0]), float(a[1])),
        "randint": lambda a: tune.randint(int(a[0]), int(a[1]) + 1),  # inclusive high, as written
        "choice": tune.choice,
        "grid": tune.grid_search,
    }
    return {key: makers[kind](args) for key, spec in space.items() for kind, args in spec.items()}


def apply_params(base: Config, params: dict[str, Any]) -> Config:
    d = base.to_dict()
    for key, value in params.items():
        section, _, name = key.partition(".")
        d[section] = {**d[section], name: value}
    return from_dict(d)


class GANStopper:
    """Per-trial early stopping on FID plateau and divergence; experiment stop on a target FID.

    Records why each trial stopped in `reasons` (trial id -> stop_reason).
    """

    def __init__(self, patience=4, min_delta=0.01, fid_ceiling=None, warmup_kimg=0.0, d_gap=12.0,
                 d_gap_reports=3, target_fid=None):
        self.patience, self.min_delta = patience, min_delta
        self.fid_ceiling, self.warmup_kimg = fid_ceiling, warmup_kimg
        self.d_gap, self.d_gap_reports, self.target_fid = d_gap, d_gap_reports, target_fid
        self.best: dict[str, float] = {}
        self.since_best: dict[str, int] = defaultdict(int)
        self.gap_run: dict[str, int] = defaultdict(int)
        self.reasons: dict[str, str] = {}
        self.reached_target = False

    def reason(self, trial_id: str, r: dict) -> str | None:
        losses = [r.get("loss_d"), r.get("loss_g"), r.get("fid")]
        if any(isinstance(v, float) and not math.isfinite(v) for v in losses):
            return "diverged_nan"
        if r.get("nan_skips", 0) and r.get("nan_skips", 0) >= r.get("step", 1):
            return "diverged_nan"
        gap = r.get("d_real", 0.0) - r.get("d_fake", 0.0)
        self.gap_run[trial_id] = self.gap_run[trial_id] + 1 if gap > self.d_gap else 0
        if self.gap_run[trial_id] >= self.d_gap_reports:
            return "d_won"
        fid = r.get("fid")
        if fid is None:
            return None
        if self.target_fid is not None and fid <= self.target_fid:
            self.reached_target = True
            return "target_fid"
        if self.fid_ceiling is not None and r.get("kimg", 0) >= self.warmup_kimg and fid > self.fid_ceiling:
            return "fid_ceiling"
        best = self.best.get(trial_id)
        if best is None or fid < best * (1 - self.min_delta):
            self.best[trial_id] = fid
            self.since_best[trial_id] = 0
        else:
            self.since_best[trial_id] += 1
            if self.since_best[trial_id] >= self.patience:
                return "plateau"
        return None

    def as_tune_stopper(self):
        from ray.tune import Stopper

        outer = self

        class _S(Stopper):
            def __call__(self, trial_id, result):
                why = outer.reason(trial_id, result)
                if why:
                    outer.reasons[trial_id] = why
                return why is not None

            def stop_all(self):
                return outer.reached_target

        return _S()


def trial_driver(config: dict, inputs=None) -> None:
    """One Tune trial: a ganray run with K Train workers, reporting through Tune.

    `inputs` (ganray.launch.SharedInputs): the dataset and evaluation statistics the experiment
    loaded once for all trials; None when the search space changes data or evaluation settings.
    """
    t_entry = time.time()
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from ganray.launch import build_trainer, prepare

    base = from_dict(config["__base__"])
    params = {k: v for k, v in config.items() if not k.startswith("__")}
    cfg = apply_params(base, params)
    ctx = ray.tune.get_context()
    cfg.run.name = ctx.get_trial_id()
    cfg.run.out = config["__runs__"]
    if cfg.train.threads_per_worker is None and config.get("__threads__"):
        cfg.train.threads_per_worker = config["__threads__"]  # the cores shared by the trials running at once
    # Resuming an errored or unfinished trial: Ray Train finds its snapshot under the same name.
    resume = (Path(cfg.run.out) / cfg.run.name).is_dir()
    p = prepare(cfg, resume=resume, inputs=inputs)
    marks = p.loop_config["startup_marks"]
    marks["trial_start"] = t_entry  # start-up counted from the trial's entry
    (Path(p.run_dir)).mkdir(parents=True, exist_ok=True)
    (Path(p.run_dir) / "config.yaml").write_text(p.cfg.to_yaml())
    if config.get("__inprocess__"):
        # PBT: one worker in this process, checkpoints reported to Tune itself, so that an
        # exploiting trial restarts from the better trial's checkpoint (tune.get_checkpoint()).
        from ganray.session import TuneSession
        from ganray.train_loop import train_worker

        marks["fit_start"] = time.time()
        train_worker(p.loop_config, session=TuneSession(p.dataset))
        return
    trainer = build_trainer(p, callbacks=[TuneReportCallback()])
    marks["fit_start"] = time.time()
    trainer.fit()
