"""Pinning a worker's compute threads to cores of their own (ganray.affinity), without Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from ganray import affinity, procs
from ganray.affinity import choose_cores

linux_only = pytest.mark.skipif(not affinity.supported(), reason="needs Linux's sched_setaffinity and /proc")


def _claim(group, cores, pid=1):
    return {"pid": pid, "start": 0, "group": group, "cores": cores}


def test_a_worker_takes_the_highest_free_cores_and_leaves_one_spare():
    assert choose_cores([0, 1], [], "run", threads=1, local_world=1) == [1]
    assert choose_cores(list(range(8)), [], "run", threads=3, local_world=2) == [5, 6, 7]
    # All cores for the training (2 x 1 on 2, 1 x 2 on 2): nothing to spare, nothing pinned.
    assert choose_cores([0, 1], [], "run", threads=1, local_world=2) is None
    assert choose_cores([0, 1], [], "run", threads=2, local_world=1) is None
    assert choose_cores([0], [], "run", threads=1, local_world=1) is None


def test_a_group_decides_alike_whichever_worker_comes_first():
    allowed = list(range(4))
    first = choose_cores(allowed, [], "a", threads=1, local_world=3)
    second = choose_cores(allowed, [_claim("a", first)], "a", threads=1, local_world=3)
    third = choose_cores(allowed, [_claim("a", first), _claim("a", second)], "a", threads=1, local_world=3)
    assert (first, second, third) == ([3], [2], [1])
    # Ray nodes on one machine under two IPs, one worker each (Ray Train counts local workers by
    # IP, so each sees local_world 1): the second claim would leave no core, so it is not made.
    assert choose_cores([0, 1], [_claim("a", [1])], "a", threads=1, local_world=1) is None
    assert choose_cores([0, 1, 2], [_claim("a", [2])], "a", threads=1, local_world=1) == [1]
    # Another group's claims count against the spare core: a second 1 x 1 run on 2 cores floats.
    assert choose_cores([0, 1], [_claim("a", [1])], "b", threads=1, local_world=1) is None
    assert choose_cores(allowed, [_claim("a", [3])], "b", threads=2, local_world=1) == [1, 2]
    # Claims on cores this process may not use (another cpuset) do not count.
    assert choose_cores([0, 1], [_claim("a", [5])], "b", threads=1, local_world=1) == [1]


@linux_only
def test_pinning_binds_the_calling_thread_and_the_threads_it_starts(tmp_path):
    allowed = set(affinity.pinnable_cores() or [])
    if len(allowed) < 2:
        pytest.skip("needs 2 cores without a CPU quota")
    seen = {}

    def worker():
        with affinity.pinned(True, 1, group="g", local_world=1, claims_dir=tmp_path) as cores:
            seen["cores"] = cores
            seen["thread"] = os.sched_getaffinity(0)
            child = threading.Thread(target=lambda: seen.setdefault("child", os.sched_getaffinity(0)))
            child.start()
            child.join()
            seen["claims"] = json.loads(affinity.claims_path(tmp_path).read_text())
        seen["after"] = os.sched_getaffinity(0)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    top = max(allowed)
    assert seen["cores"] == [top] and seen["thread"] == {top} and seen["child"] == {top}
    assert [c["cores"] for c in seen["claims"]] == [[top]] and seen["claims"][0]["pid"] == os.getpid()
    assert seen["after"] == allowed  # unpinned and released when the block ends
    assert json.loads(affinity.claims_path(tmp_path).read_text()) == []
    assert os.sched_getaffinity(0) == allowed  # the main thread was never pinned


@linux_only
def test_claims_of_ended_or_reused_processes_lapse(tmp_path):
    allowed = affinity.pinnable_cores() or []
    if len(allowed) < 2:
        pytest.skip("needs 2 cores without a CPU quota")
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = procs.start_time(alive.pid)
        top = [max(allowed)]
        path = affinity.claims_path(tmp_path)
        path.write_text(json.dumps([{"pid": ended.pid, "start": 1, "group": "old", "cores": top},
                                    {"pid": alive.pid, "start": start + 1, "group": "reused", "cores": top}]))
        t = threading.Thread(target=lambda: affinity.pin_compute_threads(1, group="new", local_world=1, claims_dir=tmp_path))
        t.start()
        t.join()
        assert [(c["group"], c["cores"]) for c in json.loads(path.read_text())] == [("new", top)]
        # A live process's claim holds: another 1 x 1 group on 2 cores is not pinned beside it.
        path.write_text(json.dumps([{"pid": alive.pid, "start": start, "group": "live", "cores": top}]))
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("cores", affinity.pin_compute_threads(
            1, group="new", local_world=1, claims_dir=tmp_path)))
        t.start()
        t.join()
        if len(allowed) == 2:
            assert out["cores"] is None
        assert json.loads(path.read_text())[0]["group"] == "live"
    finally:
        alive.kill()
        alive.wait()


@linux_only
def test_a_damaged_claims_file_is_read_as_empty(tmp_path):
    path = affinity.claims_path(tmp_path)
    for text in ("{not json", '{"a": 1}', '[{"pid": "x"}, 3]'):
        path.write_text(text)
        with affinity._locked_claims(tmp_path) as claims:
            assert claims == []
        assert json.loads(path.read_text()) == []


def test_cpu_quota_reads_cgroup_v2_and_v1_limits(tmp_path):
    v2 = tmp_path / "v2"
    (v2 / "pod" / "job").mkdir(parents=True)
    (v2 / "cpu.max").write_text("max 100000\n")
    (v2 / "pod" / "cpu.max").write_text("300000 100000\n")
    (v2 / "pod" / "job" / "cpu.max").write_text("max 100000\n")
    assert affinity.cpu_quota(v2, "0::/pod/job\n") == pytest.approx(3.0)  # the tightest on the path
    assert affinity.cpu_quota(v2, "0::/\n") is None
    v1 = tmp_path / "v1"
    (v1 / "cpu,cpuacct" / "docker").mkdir(parents=True)
    (v1 / "cpu,cpuacct" / "docker" / "cpu.cfs_quota_us").write_text("50000\n")
    (v1 / "cpu,cpuacct" / "docker" / "cpu.cfs_period_us").write_text("100000\n")
    (v1 / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    assert affinity.cpu_quota(v1, "4:memory:/x\n3:cpu,cpuacct:/docker\n") == pytest.approx(0.5)
    assert affinity.cpu_quota(v1, "3:cpu,cpuacct:/\n") is None
    assert affinity.cpu_quota(tmp_path / "missing", "0::/\n") is None


def test_under_a_cpu_quota_nothing_is_pinned(monkeypatch, tmp_path):
    monkeypatch.setattr(affinity, "supported", lambda: True)
    monkeypatch.setattr(affinity, "cpu_quota", lambda: 2.0)
    monkeypatch.setattr(affinity.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setattr(affinity.os, "sched_setaffinity", lambda pid, cores: pytest.fail("pinned"), raising=False)
    assert affinity.pin_compute_threads(1, group="g", local_world=1, claims_dir=tmp_path) is None


def test_auto_pins_only_on_an_instance_ganray_started():
    assert affinity.resolve("auto", owns_instance=True) and not affinity.resolve("auto", owns_instance=False)
    assert affinity.resolve("on", owns_instance=False) and not affinity.resolve("off", owns_instance=True)
