"""Ray Jobs API client: connect with token authentication; `ganray jobs list|logs|stop`.

How a client authenticates to a Ray 2.60 cluster (read from ray/_private/authentication/ and
ray/dashboard/modules/dashboard_sdk.py): the dashboard, which serves the Jobs API, rejects a
request without an ``Authorization: Bearer <token>`` header with HTTP 401 and one whose token
does not match with HTTP 403. ``JobSubmissionClient`` adds that header only when RAY_AUTH_MODE is
``token`` in the client's own process; the token is then the first of

1. the RAY_AUTH_TOKEN environment variable,
2. the file named by RAY_AUTH_TOKEN_PATH,
3. ~/.ray/auth_token,

with surrounding whitespace stripped (a RAY_AUTH_TOKEN_PATH naming a missing file is an error,
not a fall-through). Like ``ray start`` (and ``ray.init`` finding a local cluster), ganray's
clients turn token mode on by themselves when RAY_AUTH_MODE is unset and one of those sources
holds a token, and respect an explicit setting. They never print the token: errors name the
sources checked and what is there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import sys
from pathlib import Path
from typing import Any, Iterator

AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
# Ray reads its API server address from these, the first one set winning, *over* the address
# argument of JobSubmissionClient; connect() pins the one ganray resolved.
ADDRESS_ENVS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")


class JobsError(RuntimeError):
    """A job command cannot go on; the message says what is wrong and what to do."""


def resolve_address(address: str | None) -> str:
    """The dashboard URL to talk to: --address, else RAY_API_SERVER_ADDRESS, else RAY_ADDRESS."""
    for value in (address, *(os.environ.get(name) for name in ADDRESS_ENVS)):
        if value and value.strip():
            value = value.strip().rstrip("/")
            return value if "://" in value else f"http://{value}"
    raise JobsError(
        "no cluster address: pass --address http://HOST:8265 or set RAY_ADDRESS "
        "(for a cluster started from cluster.yaml, run `ray dashboard cluster.yaml` and use "
        "http://127.0.0.1:8265)"
    )


def token_sources() -> list[tuple[str, str, bool]]:
    """Ray's token sources in its order: (name, what is there, holds a token). Never the token."""
    token = os.environ.get(TOKEN_ENV)
    sources = [(TOKEN_ENV, "set" if token and token.strip() else "not set", bool(token and token.strip()))]
    path_env = os.environ.get(TOKEN_PATH_ENV)
    path_state = _token_file(Path(path_env)) if path_env else ("not set", False)
    sources.append((TOKEN_PATH_ENV, *path_state))
    sources.append(("~/.ray/auth_token", *_token_file(Path.home() / ".ray" / "auth_token")))
    return sources


def _token_file(path: Path) -> tuple[str, bool]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return f"{path} does not exist", False
    except OSError as e:
        return f"{path} cannot be read ({e.strerror})", False
    return (f"{path} holds a token", True) if text.strip() else (f"{path} is empty", False)


def enable_token_mode() -> str:
    """Set RAY_AUTH_MODE=token when it is unset and a token is at hand; return the mode in effect.

    Ray caches the mode in its process-wide config on first use, so after changing the
    variable we make it re-read the config, as ``ray.init`` does when it turns token mode on.
    """
    mode = os.environ.get(AUTH_MODE_ENV)
    if mode is None and any(present for _, _, present in token_sources()):
        os.environ[AUTH_MODE_ENV] = mode = "token"
        from ray._raylet import Config

        Config.initialize("")
    return (mode or "disabled").lower()


_AUTH_PROBLEMS = {
    401: "the Ray cluster at {url} requires a token and none was sent (HTTP 401).",
    403: "the Ray cluster at {url} did not accept the token that was sent (HTTP 403).",
    None: "token authentication is on (RAY_AUTH_MODE=token) but no usable token was found.",
}


def _auth_message(url: str, status: int | None) -> str:
    lines = [_AUTH_PROBLEMS[status].format(url=url)]
    mode = os.environ.get(AUTH_MODE_ENV)
    if mode is not None and mode.lower() != "token":
        lines.append(f"{AUTH_MODE_ENV}={mode} is set, so no token is sent: unset it or set it to token.")
    lines.append("Token sources checked, in Ray's order (the first one set is used):")
    lines += [f"  {name}: {what}" for name, what, _ in token_sources()]
    lines.append(
        "Put the cluster's token in one of them (for a cluster from cluster.yaml: the local file "
        "that cluster.yaml mounts as ~/.ray/auth_token on the nodes)."
    )
    return "\n".join(lines)


@contextlib.contextmanager
def api_errors(url: str) -> Iterator[None]:
    """Turn the Jobs SDK's exceptions into JobsError with a message a user can act on."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as e:
        # Ray's own wording (http_token_authentication.format_authentication_http_error).
        text = str(e)
        status = 401 if text.startswith("Authentication required") else None
        status = 403 if text.startswith("Authentication failed") else status
        raise JobsError(_auth_message(url, status)) from None
    except (ConnectionError, requests.exceptions.RequestException) as e:
        raise JobsError(f"cannot reach the Ray dashboard at {url} ({e}); is the cluster up?") from None
    except RuntimeError as e:
        if isinstance(e, JobsError):
            raise
        raise JobsError(f"the Ray Jobs API at {url} answered: {e}") from None


@contextlib.contextmanager
def _pinned_address(url: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in ADDRESS_ENVS}
    os.environ["RAY_API_SERVER_ADDRESS"] = url
    os.environ.pop("RAY_ADDRESS", None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def connect(url: str) -> Any:
    """A JobSubmissionClient for the dashboard at ``url`` (checks the connection and the token)."""
    from ray.job_submission import JobSubmissionClient

    enable_token_mode()
    with api_errors(url), _pinned_address(url):
        return JobSubmissionClient(url)


def follow_logs(client: Any, job_id: str) -> None:
    """Copy the job's log stream to stdout until it closes (the job ended or the socket broke)."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    import aiohttp

    try:
        asyncio.run(tail())
    except (RuntimeError, aiohttp.ClientError) as e:
        print(f"ganray: log stream interrupted ({e}); waiting for the job to end", file=sys.stderr)


# --- `ganray jobs` ---


def _format_time(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def _list(client: Any, args: argparse.Namespace) -> int:
    jobs = sorted(client.list_jobs(), key=lambda j: j.start_time or 0)
    rows = [("SUBMISSION ID", "STATUS", "STARTED", "ENTRYPOINT")]
    for j in jobs:
        entry = j.entrypoint if len(j.entrypoint) <= 60 else j.entrypoint[:57] + "..."
        job_id = j.submission_id or j.job_id or "-"
        rows.append((job_id, str(j.status.value), _format_time(j.start_time), entry))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
    return 0


def _logs(client: Any, args: argparse.Namespace) -> int:
    if args.follow:
        follow_logs(client, args.job_id)
    else:
        sys.stdout.write(client.get_job_logs(args.job_id))
    return 0


def _stop(client: Any, args: argparse.Namespace) -> int:
    if client.stop_job(args.job_id):
        print(f"stop requested for job {args.job_id}", file=sys.stderr)
    else:
        status = client.get_job_status(args.job_id).value
        print(f"job {args.job_id} had already ended ({status})", file=sys.stderr)
    return 0


def run_jobs(args: argparse.Namespace) -> int:
    try:
        url = resolve_address(args.address)
        client = connect(url)
        with api_errors(url):
            return args.action(client, args)
    except JobsError as e:
        print(f"ganray: error: {e}", file=sys.stderr)
        return 2


def add_address_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        metavar="URL",
        help="Ray dashboard URL, e.g. http://127.0.0.1:8265 (default: RAY_API_SERVER_ADDRESS, RAY_ADDRESS)",
    )


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """`ganray jobs list|logs ID|stop ID` against a cluster's Jobs API."""
    parser = subparsers.add_parser("jobs", help="list jobs on a Ray cluster, show their logs, stop them")
    actions = parser.add_subparsers(dest="jobs_command", required=True, metavar="{list,logs,stop}")
    for name, action, text in (
        ("list", _list, "list the cluster's jobs"),
        ("logs", _logs, "print a job's logs"),
        ("stop", _stop, "stop a running job"),
    ):
        p = actions.add_parser(name, help=text)
        add_address_argument(p)
        if name != "list":
            p.add_argument("job_id", metavar="ID", help="submission id, as printed by `ganray submit`")
        if name == "logs":
            p.add_argument("-f", "--follow", action="store_true", help="follow the logs until the job ends")
        p.set_defaults(func=run_jobs, action=action)
    return parser


add_jobs_parser = add_parser


def add_submit_parser(subparsers: Any) -> argparse.ArgumentParser:
    """`ganray submit`, defined in ganray/submit.py (which builds on this module)."""
    from ganray import submit

    return submit.add_parser(subparsers)
