"""`ganray submit`: run a script from this working directory as a Ray job and follow it.

    ganray submit [--address URL] [--no-wait] [--runtime-env FILE] [--no-pip] SCRIPT -- ARGS...

The working directory is uploaded (minus data, runs, virtual environments and VCS folders) and is
first on the job's PYTHONPATH, so the job imports the ganray you are looking at. ganray's
dependencies come from pyproject.toml as a runtime_env ``pip`` list, which Ray installs into a
virtualenv that sees the cluster's own packages (so what is already installed is not fetched
again) and caches per cluster; Ray itself is left out, the cluster's Ray must not be replaced.
``--no-pip`` skips that for clusters that already have everything (cluster.yaml installs it on
every node); ``--runtime-env FILE`` overrides any key.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from ganray.jobs import JobsError, add_address_argument, api_errors, connect, follow_logs, resolve_address

# gitignore syntax, matched against paths relative to the working directory (Ray also applies
# the directory's .gitignore and .rayignore). "/data/" is anchored so ganray/data* stays in.
DEFAULT_EXCLUDES = [
    ".git/", ".venv/", "venv/", "env/", "__pycache__/", "*.pyc", ".pytest_cache/", "*.egg-info/",
    "/build/", "/dist/", "/runs/", "/data/", "*.npz", "*.pt", "*.ckpt", "*.safetensors", "*.parquet",
]
# Variables that would carry the cluster token inside the job's environment (and into its
# logs and the dashboard's job table); tokens reach nodes as mounted files instead.
_SECRET_ENV_VARS = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
_RAY_REQUIREMENT = re.compile(r"^\s*ray\s*(\[|[<>=!~;]|$)", re.IGNORECASE)
LOG_TAIL_LINES = 30


def pip_requirements(project_dir: Path) -> list[str]:
    """The [project].dependencies of project_dir/pyproject.toml, without Ray."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise JobsError(
            "reading pyproject.toml needs Python 3.11+; pass --no-pip or a --runtime-env file with a pip list"
        ) from None

    path = project_dir / "pyproject.toml"
    if not path.is_file():
        raise JobsError(
            f"no {path} to take the job's pip dependencies from; pass --no-pip when the cluster "
            "already has them, or a --runtime-env file with a pip list"
        )
    try:
        deps = tomllib.loads(path.read_text())["project"]["dependencies"]
    except (tomllib.TOMLDecodeError, KeyError) as e:
        raise JobsError(f"{path}: cannot read [project].dependencies ({e})") from None
    return [d for d in deps if not _RAY_REQUIREMENT.match(d)]


def load_runtime_env_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise JobsError(f"--runtime-env: file {str(p)!r} does not exist")
    try:
        loaded = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise JobsError(f"--runtime-env: {str(p)!r} is not valid YAML: {e}") from None
    if not isinstance(loaded, dict):
        raise JobsError(f"--runtime-env: {str(p)!r} must hold a mapping (pip, env_vars, excludes, ...)")
    return loaded


def build_runtime_env(
    working_dir: Path, pip: bool = True, override: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The job's runtime_env. ``override`` keys replace ours, except that ``excludes`` is
    appended to the defaults and ``env_vars`` is merged into them."""
    env: dict[str, Any] = {"working_dir": str(working_dir), "excludes": list(DEFAULT_EXCLUDES)}
    if pip:
        env["pip"] = {"packages": pip_requirements(working_dir), "pip_check": False}
    for key, value in (override or {}).items():
        if key == "excludes":
            env["excludes"] += list(value)
        elif key == "env_vars" and isinstance(value, dict):
            env["env_vars"] = {**env.get("env_vars", {}), **value}
        else:
            env[key] = value
    leaked = [k for k in env.get("env_vars", {}) if k.upper() in _SECRET_ENV_VARS]
    if leaked:
        raise JobsError(
            f"runtime env sets env_vars.{leaked[0]}: the cluster token must not travel in a job's "
            "environment (it shows in job details and logs); mount it as a file on every node "
            "instead (see cluster.yaml)"
        )
    return env


def entrypoint(script: str, args: list[str]) -> str:
    return shlex.join(["python", script, *args])


def wait_for_job(client: Any, job_id: str, follow: bool = True, poll_s: float = 1.0) -> Any:
    """Block until the job is in a terminal state; return its JobStatus."""
    if follow:
        follow_logs(client, job_id)
    while True:
        status = client.get_job_status(job_id)
        if status.is_terminal():
            return status
        time.sleep(poll_s)


def _report_failure(client: Any, job_id: str, status: Any) -> None:
    info = client.get_job_info(job_id)
    message = (info.message or "").strip().splitlines()
    first_line = message[0] if message else ""
    print(f"ganray: error: job {job_id} ended {status.value}: {first_line}", file=sys.stderr)
    tail = client.get_job_logs(job_id).rstrip().splitlines()[-LOG_TAIL_LINES:]
    if tail:
        print(f"--- last {len(tail)} log lines of {job_id} ---", file=sys.stderr)
        print("\n".join(tail), file=sys.stderr)


def run_submit(args: argparse.Namespace) -> int:
    script_args = list(args.args)
    if script_args[:1] == ["--"]:
        script_args = script_args[1:]
    try:
        working_dir = Path(args.working_dir).resolve()
        if not (working_dir / args.script).is_file():
            raise JobsError(f"script {args.script!r} is not a file in the working directory {working_dir}")
        override = load_runtime_env_file(args.runtime_env) if args.runtime_env else None
        runtime_env = build_runtime_env(working_dir, pip=not args.no_pip, override=override)
        url = resolve_address(args.address)
        client = connect(url)
        with api_errors(url):
            job_id = client.submit_job(
                entrypoint=entrypoint(args.script, script_args),
                runtime_env=runtime_env,
                submission_id=args.submission_id,
                metadata={"submitted_by": "ganray"},
            )
            print(job_id, flush=True)
            print(f"ganray: submitted job {job_id} to {url}", file=sys.stderr)
            if args.no_wait:
                hint = f"follow: ganray jobs logs --follow {job_id}; stop: ganray jobs stop {job_id}"
                print(hint, file=sys.stderr)
                return 0
            try:
                status = wait_for_job(client, job_id)
            except KeyboardInterrupt:
                hint = f"ganray: job {job_id} keeps running; stop it with `ganray jobs stop {job_id}`"
                print("\n" + hint, file=sys.stderr)
                return 130
            if status.value == "SUCCEEDED":
                print(f"ganray: job {job_id} succeeded", file=sys.stderr)
                return 0
            _report_failure(client, job_id, status)
            return 1
    except JobsError as e:
        print(f"ganray: error: {e}", file=sys.stderr)
        return 2


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """`ganray submit SCRIPT -- ARGS...`: run SCRIPT from this directory as a Ray job."""
    parser = subparsers.add_parser(
        "submit",
        help="run a script (e.g. jobs/train.py) on a Ray cluster as a job and follow its logs",
        description="Upload the working directory, run `python SCRIPT ARGS...` as a Ray job, stream "
        "its logs and exit 0 only if it succeeded. Example: ganray submit jobs/train.py -- "
        "--data s3://bucket/mnist --workers 8 --set run.out=s3://bucket/runs",
    )
    add_address_argument(parser)
    parser.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    parser.add_argument("--runtime-env", metavar="FILE", help="YAML runtime_env; its keys override ganray's")
    no_pip_help = "do not pip-install pyproject.toml's dependencies (the cluster has them)"
    parser.add_argument("--no-pip", action="store_true", help=no_pip_help)
    parser.add_argument("--working-dir", default=".", metavar="DIR", help="directory to upload (default: .)")
    parser.add_argument("--submission-id", metavar="ID", help="job id to use instead of a generated one")
    parser.add_argument("script", metavar="SCRIPT", help="path of the script inside the working directory")
    parser.add_argument("args", nargs=argparse.REMAINDER, metavar="-- ARGS", help="arguments for the script")
    parser.set_defaults(func=run_submit)
    return parser

