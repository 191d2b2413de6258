"""ganray.procs: process trees by pid and start time, and the end of one that outlives its root."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from ganray import procs

linux_only = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads /proc")

# A parent that starts a child which ignores SIGTERM, prints the child's pid, then waits on it.
PARENT = """
import signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
print(child.pid, flush=True)
child.wait()
"""


def _start_tree():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    return parent, (parent.pid, procs.start_time(parent.pid)), (child, procs.start_time(child))


@linux_only
def test_tree_finds_descendants_and_reap_kills_only_what_is_left():
    parent, root, child = _start_tree()
    try:
        assert root in procs.children() and child not in procs.children()
        assert procs.tree({root}) == {root, child}
        # A stale name (the same pid, another start time) is neither alive nor followed.
        stale = (root[0], root[1] - 1)
        assert not procs.alive(stale) and procs.tree({stale}) == set()

        parent.kill()
        parent.wait()  # the child is orphaned and keeps running, as a stuck Ray worker would
        assert procs.alive(child) and not procs.alive(root)
        t0 = time.monotonic()
        killed = procs.reap({root, child}, grace_s=0.5)
        assert time.monotonic() - t0 >= 0.5  # it waited its grace for the child to end first
        assert [pid for pid, _ in killed] == [child[0]] and "time.sleep(600)" in killed[0][1]
        deadline = time.monotonic() + 10
        while procs.alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not procs.alive(child)
    finally:
        for pid in (root[0], child[0]):
            try:
                os.kill(pid, 9)
            except OSError:
                pass


@linux_only
def test_reap_returns_as_soon_as_everything_has_ended():
    quick = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    proc = (quick.pid, procs.start_time(quick.pid))
    t0 = time.monotonic()
    assert procs.reap({proc}, grace_s=30) == []  # ended (a zombie until waited for counts as ended)
    assert time.monotonic() - t0 < 10
    quick.wait()


def test_command_and_cpu_seconds_read_a_live_process_and_skip_a_gone_one():
    child = subprocess.Popen([sys.executable, "-c", "import time; t = time.process_time()\n"
                              "while time.process_time() - t < 0.3: pass"])
    child.wait(timeout=30)
    me = os.getpid()
    assert "python" in (procs.command(me) or "")
    assert procs.command(child.pid) is None  # reaped: gone
    spent = procs.cpu_seconds([me])
    t = time.process_time()
    while time.process_time() - t < 0.2:
        pass
    assert procs.cpu_seconds([me, child.pid]) - spent >= 0.1  # the gone pid adds nothing, and fails nothing
