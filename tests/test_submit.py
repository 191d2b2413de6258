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


# --- submit and jobs flows against a stand-in client (exit codes, what is printed) ---


class _FakeClient:
    """The few JobSubmissionClient calls ganray makes, with a job that ends in ``final``."""

    def __init__(self, final: str = "SUCCEEDED"):
        from ray.job_submission import JobStatus

        self.status = JobStatus(final)
        self.submitted: dict = {}
        self.stopped: list[str] = []

    def submit_job(self, **kwargs):
        self.submitted = kwargs
        return "raysubmit_fake1"

    async def tail_job_logs(self, job_id):
        for chunk in ("step 1\n", "step 2\n"):
            yield chunk

    def get_job_status(self, job_id):
        return self.status

    def get_job_info(self, job_id):
        return argparse.Namespace(message="Job entrypoint command failed with exit code 1\nmore detail")

    def get_job_logs(self, job_id):
        return "".join(f"log line {i}\n" for i in range(100)) + "ValueError: bad thing\n"

    def list_jobs(self):
        job = argparse.Namespace
        return [
            job(submission_id="raysubmit_b", job_id="02", status=self.status, start_time=2e6, entrypoint="x" * 80),
            job(submission_id=None, job_id="01000000", status=self.status, start_time=1e6, entrypoint="python a.py"),
        ]

    def stop_job(self, job_id):
        self.stopped.append(job_id)
        return not self.status.is_terminal()


def _run(monkeypatch, client, argv):
    monkeypatch.setattr(submit, "connect", lambda url: client)
    monkeypatch.setattr(jobs, "connect", lambda url: client)
    monkeypatch.chdir(REPO)
    args = _parser().parse_args(argv)
    return args.func(args)


def test_submit_follows_a_job_that_succeeds(monkeypatch, capsys):
    client = _FakeClient("SUCCEEDED")
    rc = _run(monkeypatch, client, ["submit", "--address", "http://h:8265", "--no-pip", "jobs/train.py", "--",
                                     "--workers", "2", "--name", "a b"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert out == "raysubmit_fake1\nstep 1\nstep 2\n"
    assert "job raysubmit_fake1 succeeded" in err
    assert client.submitted["entrypoint"] == "python jobs/train.py --workers 2 --name 'a b'"
    assert client.submitted["runtime_env"]["working_dir"] == str(REPO)
    assert "pip" not in client.submitted["runtime_env"]


@pytest.mark.parametrize("final", ["FAILED", "STOPPED"])
def test_submit_exits_1_with_status_and_log_tail_when_the_job_does_not_succeed(monkeypatch, capsys, final):
    rc = _run(monkeypatch, _FakeClient(final), ["submit", "--address", "http://h:8265", "jobs/train.py"])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"job raysubmit_fake1 ended {final}: Job entrypoint command failed with exit code 1" in err
    tail = err.split(f"--- last {submit.LOG_TAIL_LINES} log lines of raysubmit_fake1 ---\n")[1].splitlines()
    assert tail[-1] == "ValueError: bad thing" and tail[0] == f"log line {101 - submit.LOG_TAIL_LINES}"


def test_submit_no_wait_prints_the_id_and_returns(monkeypatch, capsys):
    client = _FakeClient("RUNNING")
    rc = _run(monkeypatch, client, ["submit", "--address", "http://h:8265", "--no-wait", "jobs/train.py"])
    out, err = capsys.readouterr()
    assert (rc, out) == (0, "raysubmit_fake1\n")
    assert "ganray jobs stop raysubmit_fake1" in err
    assert client.submitted["runtime_env"]["pip"]["packages"]  # pip install is the default


def test_jobs_stop_says_whether_the_job_was_running(monkeypatch, capsys):
    assert _run(monkeypatch, _FakeClient("RUNNING"), ["jobs", "stop", "--address", "http://h", "raysubmit_x"]) == 0
    assert "stop requested for job raysubmit_x" in capsys.readouterr().err
    assert _run(monkeypatch, _FakeClient("SUCCEEDED"), ["jobs", "stop", "--address", "http://h", "raysubmit_x"]) == 0
    assert "job raysubmit_x had already ended (SUCCEEDED)" in capsys.readouterr().err


def test_jobs_list_is_a_table_oldest_first(monkeypatch, capsys):
    assert _run(monkeypatch, _FakeClient("FAILED"), ["jobs", "list", "--address", "http://h"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["SUBMISSION", "ID"]
    assert [line.split()[:2] for line in lines[1:]] == [["01000000", "FAILED"], ["raysubmit_b", "FAILED"]]
    assert lines[1].endswith("python a.py") and lines[2].endswith("x" * 57 + "...")


@pytest.mark.parametrize("name, command", [("train.py", "train"), ("tune.py", "tune"), ("evaluate.py", "eval")])
def test_job_entrypoints_hand_their_flags_to_the_cli(monkeypatch, capsys, name, command):
    import runpy

    monkeypatch.setattr(sys, "argv", [f"jobs/{name}", "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(REPO / "jobs" / name), run_name="__main__")
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: ganray {command} ")
    docstring = (REPO / "jobs" / name).read_text()
    assert f"ray job submit --working-dir . -- python jobs/{name}" in docstring
