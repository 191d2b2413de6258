"""`ganray submit` / `ganray jobs` without a cluster: runtime env, address, token sources, errors.

The authentication messages are checked against a stand-in dashboard (a plain HTTP server that
answers 401/403 the way Ray's token middleware does), driven through the real CLI in a
subprocess so that Ray's process-wide auth config in the pytest process is never touched.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ganray import jobs, submit
from ganray.jobs import JobsError

REPO = Path(__file__).resolve().parents[1]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ganray")
    sub = parser.add_subparsers(dest="command")
    jobs.add_submit_parser(sub)
    jobs.add_jobs_parser(sub)
    return parser


# --- runtime env ---


def test_runtime_env_uploads_working_dir_and_pip_installs_pyproject_deps_without_ray():
    env = submit.build_runtime_env(REPO)
    assert env["working_dir"] == str(REPO)
    packages = env["pip"]["packages"]
    assert any(p.startswith("torch") for p in packages) and any(p.startswith("pyyaml") for p in packages)
    assert not [p for p in packages if p.lower().startswith("ray")], packages
    assert "pip" not in submit.build_runtime_env(REPO, pip=False)


def test_requirement_filter_drops_only_ray_itself(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\ndependencies = ["ray[default,train]>=2.60", "Ray==2.60.0", "raylib>=1", "numpy"]\n'
    )
    assert submit.pip_requirements(tmp_path) == ["raylib>=1", "numpy"]


def test_missing_pyproject_is_named(tmp_path):
    with pytest.raises(JobsError, match="pyproject.toml.*--no-pip"):
        submit.build_runtime_env(tmp_path)


def test_excludes_drop_data_runs_and_venvs_but_keep_the_package():
    # The matcher Ray's working_dir packaging applies to `excludes` (gitwildmatch on relative paths).
    from ray._private.thirdparty.pathspec import PathSpec

    spec = PathSpec.from_lines("gitwildmatch", submit.build_runtime_env(REPO, pip=False)["excludes"])
    dropped = ["runs/x/metrics.csv", ".venv/bin/python", ".git/HEAD", "data/mnist/a.gz", "ganray/__pycache__/a.pyc",
               "cache/real.npz", "out/checkpoint_1/state.pt", "sub/venv/lib/x.py"]
    kept = ["ganray/data/__init__.py", "ganray/data.py", "jobs/train.py", "pyproject.toml", "tests/test_submit.py",
            "ganray/checkpoint.py"]
    assert [p for p in dropped if not spec.match_file(p)] == []
    assert [p for p in kept if spec.match_file(p)] == []


def test_runtime_env_file_overrides_keys_appends_excludes_merges_env_vars(tmp_path):
    f = tmp_path / "env.yaml"
    f.write_text("pip: [numpy]\nexcludes: ['*.bin']\nenv_vars: {OMP_NUM_THREADS: '1'}\n")
    env = submit.build_runtime_env(REPO, override=submit.load_runtime_env_file(f))
    assert env["pip"] == ["numpy"]
    assert "*.bin" in env["excludes"] and "/runs/" in env["excludes"]
    assert env["env_vars"] == {"OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("name", ["RAY_AUTH_TOKEN", "ray_auth_token_path"])
def test_runtime_env_refuses_to_carry_the_token(name):
    with pytest.raises(JobsError, match=f"env_vars.{name}") as err:
        submit.build_runtime_env(REPO, pip=False, override={"env_vars": {name: "s3cret-value"}})
    assert "s3cret-value" not in str(err.value)


@pytest.mark.parametrize(
    "text, message", [(None, "does not exist"), ("- a\n- b\n", "must hold a mapping"), ("a: [1,\n", "not valid YAML")]
)
def test_bad_runtime_env_file_is_named(tmp_path, text, message):
    f = tmp_path / "env.yaml"
    if text is not None:
        f.write_text(text)
    with pytest.raises(JobsError, match=message) as err:
        submit.load_runtime_env_file(f)
    assert str(f) in str(err.value)


def test_entrypoint_quotes_arguments():
    line = submit.entrypoint("jobs/train.py", ["--name", "a b", "--set", "run.out=s3://b/r"])
    assert shlex.split(line) == ["python", "jobs/train.py", "--name", "a b", "--set", "run.out=s3://b/r"]


# --- address and token sources ---


def test_address_precedence(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:8265")
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://10.0.0.2:8265/")
    assert jobs.resolve_address("https://head:8265") == "https://head:8265"
    assert jobs.resolve_address(None) == "http://10.0.0.2:8265"
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS")
    assert jobs.resolve_address(None) == "http://10.0.0.1:8265"
    monkeypatch.delenv("RAY_ADDRESS")
    with pytest.raises(JobsError, match="no cluster address.*--address.*RAY_ADDRESS"):
        jobs.resolve_address(None)


def test_token_sources_describe_without_revealing(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RAY_AUTH_TOKEN", "tok-from-env-123")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("  \n")
    sources = jobs.token_sources()
    assert [(n, present) for n, _, present in sources] == [
        ("RAY_AUTH_TOKEN", True), ("RAY_AUTH_TOKEN_PATH", False), ("~/.ray/auth_token", False)
    ]
    text = repr(sources)
    assert "tok-from-env-123" not in text and "does not exist" in text and "is empty" in text


# --- the CLI ---


def test_cli_registers_submit_and_jobs():
    from ganray.cli import build_parser

    args = build_parser().parse_args(["submit", "--no-wait", "jobs/train.py", "--", "--workers", "2"])
    assert args.func is submit.run_submit and args.args[-2:] == ["--workers", "2"]
    args = build_parser().parse_args(["jobs", "stop", "raysubmit_x"])
    assert args.func is jobs.run_jobs and args.job_id == "raysubmit_x"


def test_submit_parses_script_and_its_arguments():
    args = _parser().parse_args(["submit", "--no-pip", "jobs/train.py", "--", "--workers", "2", "--set", "a.b=1"])
    assert (args.script, args.no_pip, args.func) == ("jobs/train.py", True, submit.run_submit)
    assert args.args[-4:] == ["--workers", "2", "--set", "a.b=1"]
    args = _parser().parse_args(["jobs", "logs", "--follow", "raysubmit_x"])
    assert (args.job_id, args.follow) == ("raysubmit_x", True)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["submit", "--no-pip", "jobs/train.py"], "no cluster address"),
        (["submit", "--address", "http://127.0.0.1:9", "no/such.py"], "'no/such.py' is not a file"),
        (["jobs", "list"], "no cluster address"),
    ],
)
def test_bad_input_exits_2_with_a_message(monkeypatch, capsys, argv, message):
    for name in jobs.ADDRESS_ENVS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(REPO)
    args = _parser().parse_args(argv)
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("ganray: error: ") and message in err and "Traceback" not in err


class _Dashboard(http.server.BaseHTTPRequestHandler):
    """Answers like Ray 2.60's token middleware: 401 without a token, 403 with a wrong one."""

    token = "the-right-token"

    def do_GET(self):
        header = self.headers.get("Authorization", "")
        if not header:
            status, body = 401, b"Unauthorized: Missing authentication token"
        elif header != f"Bearer {self.token}":
            status, body = 403, b"Forbidden: Invalid authentication token"
        else:
            status, body = 200, json.dumps({"ray_version": "2.60.0"}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def fake_dashboard():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Dashboard)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# `ganray jobs` as ganray.cli registers it (test above), without importing the other
# subcommands' modules (torch), which would cost seconds per call on 2 cores.
_CLI = (
    "import argparse, sys\n"
    "from ganray import jobs\n"
    "parser = argparse.ArgumentParser(prog='ganray')\n"
    "jobs.add_jobs_parser(parser.add_subparsers())\n"
    "args = parser.parse_args()\n"
    "sys.exit(args.func(args))\n"
)


def _cli(url: str, home: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "RAY_API"))}
    clean.update(HOME=str(home), PYTHONPATH=str(REPO), **env)
    return subprocess.run(
        [sys.executable, "-c", _CLI, "jobs", "list", "--address", url],
        env=clean, capture_output=True, text=True, timeout=120,
    )


def test_missing_and_wrong_tokens_get_clear_messages(fake_dashboard, tmp_path):
    # No token anywhere: token mode stays off, nothing is sent, the cluster says 401.
    r = _cli(fake_dashboard, tmp_path)
    assert r.returncode == 2, r.stderr
    assert "requires a token and none was sent (HTTP 401)" in r.stderr
    for source in ("RAY_AUTH_TOKEN: not set", "RAY_AUTH_TOKEN_PATH: not set", "auth_token does not exist"):
        assert source in r.stderr
    assert "Traceback" not in r.stderr

    # A wrong token in ~/.ray/auth_token: token mode turns on by itself, the cluster says 403.
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("wrong-secret-4711\n")
    r = _cli(fake_dashboard, tmp_path)
    assert r.returncode == 2 and "did not accept the token that was sent (HTTP 403)" in r.stderr, r.stderr
    assert "auth_token holds a token" in r.stderr
    assert "wrong-secret-4711" not in r.stderr + r.stdout

    # Token mode asked for explicitly, but RAY_AUTH_TOKEN_PATH names a missing file.
    r = _cli(fake_dashboard, tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(tmp_path / "nope"))
    assert r.returncode == 2 and "no usable token was found" in r.stderr, r.stderr
    assert f"RAY_AUTH_TOKEN_PATH: {tmp_path / 'nope'} does not exist" in r.stderr

    # Auth disabled on purpose by the user: say that this is why no token went out.
    r = _cli(fake_dashboard, tmp_path, RAY_AUTH_MODE="disabled")
    assert r.returncode == 2 and "RAY_AUTH_MODE=disabled is set" in r.stderr, r.stderr
