"""`ganray` command line: parses and dispatches, nothing else."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# Subcommands owned by other modules: (module, function that adds the parser).
_PLUGINS = [
    ("ganray.tune_cli", "add_parser"),
    ("ganray.metrics.eval_cli", "add_parser"),
    ("ganray.metrics.evaluator_cli", "add_parser"),
    ("ganray.jobs", "add_submit_parser"),
    ("ganray.jobs", "add_jobs_parser"),
    ("ganray.report", "add_parser"),
    ("ganray.report", "add_runs_parser"),
]


class UsageError(ValueError):
    pass


def fail(message: str, code: int = 2) -> int:
    print(f"ganray: error: {message}", file=sys.stderr)
    return code


def add_config_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by `train` and `tune`: they all become config overrides."""
    p.add_argument("--config", help="YAML config file (sections data, model, loss, optim, ema, augment, train, eval, run)")
    p.add_argument("--preset", default="mnist", help="starting preset: mnist (default), dcgan, debug")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. --set optim.lr_g=1e-4 (repeatable)")
    p.add_argument("--data", help="dataset: digits, an IDX/image/Parquet folder, an .npz, or a URI (data.source)")
    p.add_argument("--workers", type=int, help="data-parallel training workers (train.workers)")
    p.add_argument("--kimg", type=float, help="training length in thousands of images (train.kimg)")
    p.add_argument("--steps", type=int, help="training length in G steps (train.steps)")
    p.add_argument("--max-minutes", type=float, help="wall-clock budget for training (train.max_minutes)")
    p.add_argument("--seed", type=int, help="run seed (train.seed)")
    p.add_argument("--out", help="storage root for runs, local path or URI (run.out)")
    p.add_argument("--gpu", dest="gpu", action="store_true", default=None, help="train on GPUs (auto when present)")
    p.add_argument("--no-gpu", dest="gpu", action="store_false")
    p.add_argument("--address", help="Ray cluster address (else RAY_ADDRESS, else a local Ray)")


# Flags whose value is a path or a name, taken as typed: unquoted, YAML would read
# `--name 2024` as an int, `--name yes` as a bool and `--name null` as "no name".
_STRING_FLAGS = ("data", "out", "name")


def _yaml_str(text: str) -> str:
    """A YAML double-quoted scalar that parses back to exactly `text`."""
    def esc(c: str) -> str:
        if c.isprintable() and c not in '"\\':
            return c
        return f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}"

    return '"' + "".join(esc(c) for c in text) + '"'


def config_from_args(args: argparse.Namespace):
    from ganray.config import load_config

    overrides = list(args.overrides)
    flag_keys = {"data": "data.source", "workers": "train.workers", "kimg": "train.kimg", "steps": "train.steps",
                 "max_minutes": "train.max_minutes", "seed": "train.seed", "out": "run.out", "gpu": "train.use_gpu",
                 "name": "run.name"}
    if getattr(args, "tune_name", False):
        flag_keys.pop("name")  # for `tune`, --name names the experiment, not one run
    for attr, key in flag_keys.items():
        value = getattr(args, attr, None)
        if value is not None:
            overrides.append(f"{key}={_yaml_str(value) if attr in _STRING_FLAGS else value}")
    if getattr(args, "steps", None) is not None and getattr(args, "kimg", None) is None:
        overrides.append("train.kimg=null")
    return load_config(args.config, overrides, preset=args.preset)


def _train(args: argparse.Namespace) -> int:
    from ganray.config import ConfigError

    try:
        cfg = config_from_args(args)
    except ConfigError as e:
        return fail(str(e))
    if args.dry_run:
        print(cfg.to_yaml(), end="")
        return 0
    from ganray.data import DataError
    from ganray.launch import RunError, run_training

    try:
        summary = run_training(cfg, resume=args.resume, progress=not args.quiet, address=args.address)
    except (RunError, DataError) as e:
        return fail(str(e), code=1 if isinstance(e, RunError) else 2)
    except KeyboardInterrupt as e:
        from ganray.instance import Terminated

        if isinstance(e, Terminated):
            return fail("terminated (SIGTERM); continue with the same command plus --resume", code=143)
        return fail("interrupted; continue with the same command plus --resume", code=130)
    print(f"run folder: {summary['run_dir']}")
    print(f"{summary['kimg']:.1f} kimg in {summary['wall_s']:.0f} s ({summary['img_per_s']:.0f} img/s)"
          + (f", best FID {summary['best_fid']:.2f}" if summary.get("best_fid") is not None else ""))
    return 0


def _sample(args: argparse.Namespace) -> int:
    from ganray.checkpoint import CheckpointError
    from ganray.sample import write_samples

    try:
        path = write_samples(args.checkpoint, args.out, n=args.n, label=args.label, seed=args.seed)
    except (CheckpointError, ValueError) as e:
        return fail(str(e))
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ganray", description="Distributed GAN training on Ray.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a GAN (starts a local Ray unless RAY_ADDRESS/--address is set)")
    add_config_args(p)
    p.add_argument("--name", help="run name: the folder <out>/<name> (run.name)")
    p.add_argument("--resume", action="store_true", help="continue the run named --name from its latest checkpoint")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=_train)

    p = sub.add_parser("sample", help="generate images from a checkpoint (.png grid or .npz array)")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder, or a run folder (best checkpoint)")
    p.add_argument("--n", type=int, default=64, help="number of images")
    p.add_argument("--out", required=True, help="output file: .png (grid) or .npz (uint8 N x H x W x C)")
    p.add_argument("--label", type=int, help="class label for a conditional generator (default: all classes)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_sample)

    for module_name, fn_name in _PLUGINS:
        getattr(importlib.import_module(module_name), fn_name)(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
