"""cluster.yaml (schema and security), and a real two-node Ray cluster on this machine.

The cluster is driven from outside, as a user drives one. Each node is `ray start --block` in a
session of its own, with its own --temp-dir under a private folder, free ports, and token
authentication on (RAY_AUTH_MODE=token, token file mode 600). The pytest process never connects
to it: jobs go through `ganray submit` in subprocesses and checks through the Jobs HTTP API, so
the session `ray_session` fixture can coexist with it. Teardown stops exactly what these tests
started (never `ray stop`, which would stop everybody's Ray on the machine).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from ganray import affinity

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 150


def _needs_local_cluster(test: Callable) -> Callable:
    for mark in (
        pytest.mark.ray,
        pytest.mark.skipif(not sys.platform.startswith("linux"), reason="teardown reads /proc"),
        pytest.mark.skipif(shutil.which("ray") is None, reason="the `ray` CLI is not on PATH"),
    ):
        test = mark(test)
    return test


# --- cluster.yaml ---


MULTI_GPU_TYPES = {"g5.12xlarge", "g5.24xlarge", "g5.48xlarge", "g6.12xlarge", "p4d.24xlarge", "p5.48xlarge"}


@pytest.fixture(scope="module")
def cluster_yaml() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_matches_rays_schema(cluster_yaml):
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(cluster_yaml, schema)
    # What `ray up` itself does before launching anything: AWS defaults filled in, then checked.
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cluster_yaml))
    workers = {k: v for k, v in cluster_yaml["available_node_types"].items() if k != cluster_yaml["head_node_type"]}
    assert workers and all(0 <= w["min_workers"] <= w["max_workers"] for w in workers.values())
    assert all(w["node_config"]["InstanceType"] in MULTI_GPU_TYPES for w in workers.values())


def test_cluster_yaml_ingress_is_ssh_from_your_group_only(cluster_yaml):
    text = (REPO / "cluster.yaml").read_text()
    config_lines = "\n".join(line.split("#")[0] for line in text.splitlines())
    assert "0.0.0.0/0" not in config_lines and "::/0" not in config_lines
    # Ray creates a group with SSH open to 0.0.0.0/0 for any node type without SecurityGroupIds,
    # and `provider.security_group` only adds rules to it (ray/autoscaler/_private/aws/config.py).
    assert "security_group" not in cluster_yaml["provider"]
    for name, node_type in cluster_yaml["available_node_types"].items():
        groups = node_type["node_config"].get("SecurityGroupIds")
        assert groups and all(isinstance(g, str) and g.startswith("sg-") for g in groups), name


def test_cluster_yaml_authenticates_every_node_with_a_mounted_token_file(cluster_yaml):
    text = (REPO / "cluster.yaml").read_text()
    mounts = cluster_yaml["file_mounts"]
    assert mounts.get("~/.ray/auth_token", "").startswith(("~/", "/")), "mount the token from a local file"
    assert any("chmod 600 ~/.ray/auth_token" in c for c in cluster_yaml["setup_commands"])
    # Never the token itself in the file, nor in a job or node environment.
    assert not re.search(r"\b[0-9a-f]{32,}\b", text) and "RAY_AUTH_TOKEN=" not in text
    starts = cluster_yaml["head_start_ray_commands"] + cluster_yaml["worker_start_ray_commands"]
    for command in (c for c in starts if "ray start" in c):
        assert command.index("RAY_AUTH_MODE=token") < command.index("ray start"), command
        assert "RAY_AUTH_MODE=disabled" not in command
    head_start = next(c for c in cluster_yaml["head_start_ray_commands"] if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start


# --- a local two-node cluster ---


@dataclass
class LocalCluster:
    url: str  # the dashboard / Jobs API
    token: str
    client_env: dict[str, str]  # environment for `ganray` client subprocesses
    root: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _api(cluster: LocalCluster, path: str, token: str | None = None) -> Any:
    request = urllib.request.Request(cluster.url + path)
    request.add_header("Authorization", f"Bearer {cluster.token if token is None else token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _alive_node_ids(cluster: LocalCluster) -> set[str]:
    nodes = _api(cluster, "/api/v0/nodes")["data"]["result"]["result"]
    return {n["node_id"] for n in nodes if n["state"] == "ALIVE"}


def _wait_for(check: Callable[[], bool], what: str, procs: list[subprocess.Popen], logs: list[Path]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            break
        try:
            if check():
                return
        except (OSError, KeyError, ValueError):
            pass
        time.sleep(1)
    tails = "\n".join(f"--- {log} ---\n" + "\n".join(log.read_text().splitlines()[-15:]) for log in logs)
    raise RuntimeError(f"local cluster: {what} did not happen within {START_TIMEOUT_S} s\n{tails}")


def _ray_start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            ["ray", "start", "--block", "--disable-usage-stats", "--object-store-memory=100000000", *args],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, session id, command line), read from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (name)": state ppid pgrp session ...
        if fields[0] != "Z":
            table[int(entry)] = (int(fields[1]), int(fields[3]), cmd)
    return table


def _our_pids(sessions: set[int], marker: str) -> set[int]:
    """Processes of our nodes: in their sessions, naming our temp root, or descended from them.

    Job drivers get sessions of their own (Ray's job supervisor starts them with setsid), so
    they are found as descendants of our workers; workers themselves keep the node's session.
    """
    table = _processes()
    ours = {pid for pid, (_, sid, cmd) in table.items() if sid in sessions or marker in cmd}
    while True:
        children = {pid for pid, (ppid, _, _) in table.items() if ppid in ours} - ours
        if not children:
            break
        ours |= children
    return ours - {os.getpid()}


def _signal(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _stop(procs: list[subprocess.Popen], marker: str) -> None:
    sessions = {p.pid for p in procs}
    pids = _our_pids(sessions, marker)
    # The `ray start --block` parents only watch their children, and on SIGTERM a head drains
    # for up to 30 s: kill them outright; everything else gets SIGTERM first, as `ray stop` does.
    _signal(sessions & pids, signal.SIGKILL)
    _signal(pids - sessions, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and pids & set(_processes()):
        time.sleep(0.2)
    _signal(pids | _our_pids(sessions, marker), signal.SIGKILL)
    for p in procs:
        p.wait(timeout=30)


@pytest.fixture(scope="module")
def cluster():
    # A short root: Ray's unix sockets live under --temp-dir and paths are capped at 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="grc-", dir="/tmp"))
    token = secrets.token_hex(32)
    token_file = root / "auth_token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_API_SERVER", "RAY_AUTH"))}
    node_env = {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    (root / "home").mkdir()
    # Clients: token mode left for ganray to turn on; HOME isolated from any ~/.ray/auth_token.
    client_env = {**base, "RAY_AUTH_TOKEN_PATH": str(token_file), "HOME": str(root / "home"),
                  "PYTHONPATH": str(REPO)}
    gcs, dashboard = _free_port(), _free_port()
    logs = [root / "head.log", root / "second.log"]
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_ray_start([
            "--head", f"--port={gcs}", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}", f"--ray-client-server-port={_free_port()}",
            f"--dashboard-agent-listen-port={_free_port()}", "--num-cpus=2", '--resources={"head_node": 1}',
            f"--temp-dir={root / 'head'}",
        ], node_env, logs[0]))
        c = LocalCluster(f"http://127.0.0.1:{dashboard}", token, client_env, root)
        # The second node needs only the GCS; the dashboard comes up meanwhile.
        _wait_for(lambda: _port_open(gcs), "head GCS listening", procs, logs)
        procs.append(_ray_start([
            f"--address=127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1",
            f"--dashboard-agent-listen-port={_free_port()}", "--num-cpus=2", '--resources={"second_node": 1}',
            f"--temp-dir={root / 'second'}",
        ], node_env, logs[1]))
        _wait_for(lambda: len(_alive_node_ids(c)) == 2, "second node joined", procs, logs)
        yield c
    finally:
        _stop(procs, str(root))
        shutil.rmtree(root, ignore_errors=True)


# `ganray submit` / `ganray jobs` as registered in ganray.cli (checked in test_submit.py), without
# importing the other subcommands' modules (torch): a few seconds less per call on 2 cores.
_CLI = (
    "import argparse, sys\n"
    "from ganray import jobs\n"
    "parser = argparse.ArgumentParser(prog='ganray')\n"
    "sub = parser.add_subparsers()\n"
    "jobs.add_submit_parser(sub)\n"
    "jobs.add_jobs_parser(sub)\n"
    "args = parser.parse_args()\n"
    "sys.exit(args.func(args))\n"
)


def _ganray(cluster: LocalCluster, *args: str, cwd: Path = REPO, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _CLI, *args], cwd=cwd, env=cluster.client_env,
        capture_output=True, text=True, timeout=timeout,
    )


@_needs_local_cluster
def test_jobs_api_requires_the_token(cluster):
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(cluster.url + "/api/jobs/", timeout=10)
    assert err.value.code == 401
    with pytest.raises(urllib.error.HTTPError) as err:
        _api(cluster, "/api/jobs/", token="0" * 64)
    assert err.value.code == 403
    assert isinstance(_api(cluster, "/api/jobs/"), list)  # the same request with the token passes


@_needs_local_cluster
def test_failing_job_fails_submit_and_shows_the_error(cluster, tmp_path):
    (tmp_path / "boom.py").write_text("import sys\nraise ValueError('ganray-test-boom ' + ' '.join(sys.argv[1:]))\n")
    r = _ganray(cluster, "submit", "--address", cluster.url, "--no-pip", "--working-dir", str(tmp_path),
                "boom.py", "--", "--flag", "a b")
    assert r.returncode == 1, r.stderr
    job_id = r.stdout.splitlines()[0]
    assert job_id.startswith("raysubmit_")
    assert f"job {job_id} ended FAILED" in r.stderr
    assert "ValueError: ganray-test-boom --flag a b" in r.stderr  # the log tail, shown on failure
    assert cluster.token not in r.stdout + r.stderr

    listed = _ganray(cluster, "jobs", "list", "--address", cluster.url)
    assert listed.returncode == 0, listed.stderr
    assert any(line.split()[:2] == [job_id, "FAILED"] for line in listed.stdout.splitlines()), listed.stdout
    logs = _ganray(cluster, "jobs", "logs", "--address", cluster.url, job_id)
    assert logs.returncode == 0 and "ganray-test-boom" in logs.stdout


def _train_unavailable() -> str | None:
    """Why the training job cannot run yet (the lead's CLI and config are being written)."""
    try:
        from ganray.cli import build_parser
        from ganray.config import TrainConfig
    except ImportError as e:
        return f"ganray.cli / ganray.config not importable yet: {e}"
    if "placement_strategy" not in TrainConfig.model_fields:
        return "config has no train.placement_strategy yet"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            build_parser().parse_args(["train", "--help"])
        except SystemExit as e:
            if e.code != 0:
                return "`ganray train` is not registered in ganray.cli yet"
    return None


@_needs_local_cluster
def test_training_job_spreads_workers_over_both_nodes(cluster, mnist_dir, tmp_path):
    reason = _train_unavailable()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "runs"
    r = _ganray(cluster, "submit", "--address", cluster.url, "--no-pip", "jobs/train.py", "--",
                "--preset", "debug", "--data", str(mnist_dir), "--workers", "2",
                "--set", "train.placement_strategy=SPREAD", "--set", "train.cpu_affinity=on",
                "--set", f"run.out={out}", "--name", "cluster-e2e")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = out / "cluster-e2e"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished"
    nodes = summary["worker_nodes"]
    assert len(nodes) == 2 and len(set(nodes)) == 2, nodes
    assert set(nodes) == _alive_node_ids(cluster)
    # Pinned on request, 1 thread each, only with a core to spare: both nodes are this machine
    # (one IP, so Ray Train counts both ranks as local to each other), so 2 cores leave none and
    # neither rank is pinned; 3 or more give each rank a core of its own.
    allowed = affinity.pinnable_cores()
    if allowed is not None:
        cores = summary["worker_cores"]
        if len(allowed) >= 3:
            assert sorted(cores) == [[allowed[-2]], [allowed[-1]]], cores
        else:
            assert cores == [None, None], cores
    assert list(run.glob("checkpoint_*/state.pt")), sorted(p.name for p in run.iterdir())
