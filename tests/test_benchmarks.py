"""Smoke tests of the benchmark entry points: benchmarks/run.py, plain_loop.py, gpu_check.sh."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ganray.config import debug
from ganray.startup import startup_breakdown

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

from common import Row, alternating, median_ratio, ratio_row, steady  # noqa: E402
from plain_loop import plain_loop  # noqa: E402


def test_steady_skips_the_first_report_and_weights_by_images():
    rows = [  # steps 10, 20, 40 at batch 8: windows of 80, 80, 160 images
        {"step": 10, "img_per_s": 10.0, "data_wait_frac": 0.5},
        {"step": 20, "img_per_s": 80.0, "data_wait_frac": 0.0},
        {"step": 40, "img_per_s": 160.0, "data_wait_frac": 0.1},
    ]
    got = steady(rows, 8)
    assert got["windows"] == 2
    assert got["img_per_s"] == pytest.approx((80 + 160) / (1.0 + 1.0))
    assert got["data_wait_frac"] == pytest.approx(0.05)
    assert got["best_img_per_s"] == pytest.approx(160.0)


def test_ratio_row_checks_the_target_and_survives_missing_values():
    assert ratio_row("a", "m", 98.0, 100.0, at_least=0.97).ok is True
    assert ratio_row("a", "m", 90.0, 100.0, at_least=0.97).ok is False
    missing = ratio_row("a", "m", None, 100.0, at_least=0.97)
    assert missing.value is None and missing.ok is None
    assert Row("a", "m", 1.0).as_dict()["benchmark"] == "a"


def test_alternating_rounds_reverse_the_order_and_keep_each_round_together():
    order = []
    pairs = alternating(4, lambda i: order.append(("a", i)) or f"a{i}", lambda i: order.append(("b", i)) or f"b{i}")
    assert order == [("a", 0), ("b", 0), ("b", 1), ("a", 1), ("a", 2), ("b", 2), ("b", 3), ("a", 3)]
    assert pairs == [("a0", "b0"), ("a1", "b1"), ("a2", "b2"), ("a3", "b3")]
    order.clear()
    arm = {k: (lambda i, k=k: order.append(k + str(i)) or k + str(i)) for k in "abc"}
    triples = alternating(2, arm["a"], arm["b"], arm["c"])
    assert order == ["a0", "b0", "c0", "c1", "b1", "a1"]  # ABCCBA: a linear drift favours none
    assert triples == [("a0", "b0", "c0"), ("a1", "b1", "c1")]
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        alternating(0, str, str)
    with pytest.raises(ValueError, match="at least 2 arms"):
        alternating(1, str)


def test_median_ratio_is_robust_to_one_disturbed_pair_and_to_missing_numbers():
    value, ratios = median_ratio([1.0, 0.5, 1.2, None], [1.0, 1.0, 1.0, 2.0])
    assert ratios == [1.0, 0.5, 1.2, None]
    assert value == 1.0  # not the mean (0.9): the one slow pair does not decide
    assert median_ratio([None], [1.0]) == (None, [None])
    with pytest.raises(ValueError):
        median_ratio([1.0], [1.0, 2.0])


def test_startup_breakdown_phases_add_up():
    t = 1000.0
    marks = {"process_start": t, "cmd": t + 1, "ray_ready": t + 3, "prepare_start": t + 3.1,
             "dataset_ready": t + 5, "prepared": t + 5.5, "fit_start": t + 6, "worker_start": t + 9,
             "loop_ready": t + 10, "first_batch": t + 10.5, "first_step": t + 11}
    got = startup_breakdown(marks)
    assert got["ray_start_s"] == pytest.approx(2.0) and got["worker_group_start_s"] == pytest.approx(3.0)
    assert got["total_s"] == pytest.approx(11.0)
    assert sum(v for k, v in got.items() if k != "total_s") == pytest.approx(11.0 - 0.1)  # gap before prepare
    # A Tune trial has no driver command marks: the total runs from the trial function's entry.
    trial_marks = {k: v for k, v in marks.items() if k not in ("process_start", "cmd", "ray_ready")}
    trial = startup_breakdown({**trial_marks, "trial_start": t + 2.5})
    assert "ray_start_s" not in trial and trial["total_s"] == pytest.approx(11.0 - 2.5)
    assert trial["trial_imports_s"] == pytest.approx(0.6)
    assert startup_breakdown(trial_marks)["total_s"] == pytest.approx(11.0 - 3.1)  # runs before trial_start


def test_plain_loop_trains_and_measures():
    cfg = debug()
    cfg.data.source = "digits"
    out = plain_loop(cfg, steps=6, report_every=2, threads=1)
    assert len(out["window_img_per_s"]) == 3 and out["img_per_s"] > 0
    assert out["first_step_s"] > 0 and out["wall_s"] >= out["first_step_s"]
    assert all(v == v for v in out["final"].values())  # finite statistics, not NaN


def test_plain_ddp_runs_two_ranks_and_sums_them():
    """The scaling benchmark's plain-PyTorch reference: two processes under DDP (gloo)."""
    from plain_loop import plain_ddp

    cfg = debug()
    cfg.data.source = "digits"
    out = plain_ddp(cfg, workers=2, steps=4, report_every=2, threads=1)
    assert out["workers"] == 2 and len(out["per_rank_img_per_s"]) == 2
    assert out["img_per_s"] == pytest.approx(sum(out["per_rank_img_per_s"]))
    assert len(out["window_img_per_s"]) == 2 and all(math.isfinite(v) for v in out["final"].values())
    with pytest.raises(ValueError, match="workers >= 2"):
        plain_ddp(cfg, workers=1, steps=4, report_every=2)
    cfg.train.batch_size_per_worker = 5000  # more than a rank's rows: each rank fails, and says why
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"plain DDP rank \d failed:(.|\n)*fewer than train.batch_size_per_worker"):
        plain_ddp(cfg, workers=2, steps=4, report_every=2, timeout_s=120)
    assert time.monotonic() - t0 < 60


def test_run_rejects_unknown_benchmark(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "run.py"), "--only", "nope", "--json", str(tmp_path / "x")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "nope" in proc.stderr


def test_gpu_check_runs_end_to_end_on_cpu(tmp_path):
    """The GPU check's CPU path: plain loop and ganray in fp32 and bf16, features, table, JSON."""
    out = tmp_path / "gpu.json"
    t0 = time.time()
    proc = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--device", "cpu", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ganray 1 worker img/s, bf16" in proc.stdout
    rows = {r["measurement"]: r for r in json.loads(out.read_text())["benchmarks"]["gpu"]["rows"]}
    for key in ("plain loop img/s, fp32", "ganray 1 worker img/s, fp32", "plain loop img/s, bf16",
                "ganray 1 worker img/s, bf16", "FID features, classifier"):
        assert rows[key]["value"] and rows[key]["value"] > 0, key
    print(f"gpu_check.sh --device cpu: {time.time() - t0:.0f} s")


def test_gpu_check_rejects_bad_device():
    proc = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--device", "tpu"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--device" in proc.stderr


def test_the_floor_benchmark_finds_each_helper_it_stops_and_nothing_ray_train_uses(ray_session):
    """`run.py --only floor` stops Ray's helpers by their command lines (ray_idle.HELPERS); a Ray
    release that renamed one would leave it running (ray_phases.py then refuses to measure)."""
    import ray_idle

    from ganray import procs

    def found() -> dict[str, list[int]]:
        return ray_idle.helpers([pid for pid, _ in procs.tree(procs.children())])

    deadline = time.monotonic() + 30  # the raylet starts its agents after ray.init returns
    while set(got := found()) != set(ray_idle.HELPERS) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert set(got) == set(ray_idle.HELPERS)
    stopped = [procs.command(pid) or "" for pids in got.values() for pid in pids]
    assert not [c for c in stopped if "gcs_server" in c or "/raylet" in c or "Train" in c], stopped
    assert all(len(pids) == 1 for pids in got.values()), got  # one of each on one node


def test_phase_ratios_pair_each_cycle_and_leave_out_the_warm_up():
    from ray_phases import cycle_ratios, phase_rates

    timeline = [(10.0 * i, 10.0 * i + 10, state, 0.0) for i, state in enumerate("ABCCBA" * 3)]
    rate = {"A": 100.0, "B": 90.0, "C": 95.0}
    windows = []  # (end, images, seconds): 1-s windows at each phase's rate, half of it in the first phase
    for t0, _, state, _ in timeline:
        windows += [(t0 + k + 1, rate[state] * (0.5 if t0 == 0 else 1.0), 1.0) for k in range(10)]
    rates = phase_rates(windows, timeline, settle_s=2.0)
    assert rates[1] == ("B", pytest.approx(90.0)) and rates[0] == ("A", pytest.approx(50.0))
    ratios = cycle_ratios(rates)
    assert ratios["B/A"] == pytest.approx([0.9, 0.9]) and ratios["C/A"] == pytest.approx([0.95, 0.95])
    assert cycle_ratios(rates, skip=0)["B/A"][0] == pytest.approx(90 / 75)  # A: the mean of 50 and 100
