"""`ganray tune`: hyperparameter search over any config key, stopped early on FID."""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    from ganray.cli import config_from_args, fail
    from ganray.config import ConfigError
    from ganray.tune import load_search_file

    try:
        base = config_from_args(args)
        space, stopping = load_search_file(args.search)
        if args.target_fid is not None:
            stopping["target_fid"] = args.target_fid
    except ConfigError as e:
        return fail(str(e))
    from ganray.data import DataError
    from ganray.tune_run import experiment_name, run_tune

    try:
        summary = run_tune(base, space, stopping, name=experiment_name(args.name), num_samples=args.num_samples,
                           scheduler=args.scheduler, max_concurrent_trials=args.max_concurrent,
                           workers_per_trial=args.workers_per_trial, resume=args.resume, searcher=args.searcher,
                           seed=args.search_seed, grace_kimg=args.grace_kimg)
    except (ConfigError, DataError) as e:
        return fail(str(e))
    table = summary["table"]
    cols = [c for c in ["trial_id", *space, "best_fid", "kimg", "stop_reason"] if c in table]
    print(table[cols].to_string(index=False))
    print(f"experiment folder: {summary['exp_dir']}")
    if summary.get("best_fid") is not None:
        print(f"best FID {summary['best_fid']:.2f} (trial {summary['best_trial']}); "
              f"train it with: ganray train --config {summary['exp_dir']}/best_config.yaml")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    from ganray.cli import add_config_args

    p = subparsers.add_parser("tune", help="hyperparameter search with Ray Tune (ASHA on FID by default)")
    add_config_args(p)
    p.add_argument("--search", help="YAML search space (default: the built-in DCGAN space)")
    p.add_argument("--num-samples", type=int, default=8, help="trials to sample (each grid point counts once)")
    p.add_argument("--scheduler", default="asha", choices=["asha", "pbt", "fifo"])
    p.add_argument("--searcher", default="random", choices=["random", "optuna"])
    p.add_argument("--search-seed", type=int, help="seed of the searcher: the same seed samples the same trial configs")
    p.add_argument("--grace-kimg", type=float,
                   help="ASHA's first rung in kimg (default: the first evaluation, train.kimg / 6 at most)")
    p.add_argument("--max-concurrent", type=int,
                   help="concurrent trials (default: from cluster resources; not with --scheduler pbt, "
                        "whose population is every trial)")
    p.add_argument("--workers-per-trial", type=int, default=1, help="Ray Train workers in each trial")
    p.add_argument("--target-fid", type=float, help="stop the whole search once a trial reaches this FID")
    p.add_argument("--name", help="experiment name: the folder <out>/<name>")
    p.add_argument("--resume", action="store_true", help="continue the experiment named --name")
    p.set_defaults(func=_run, tune_name=True)
    return p
