"""`ganray tune` end to end: 4 tiny trials on MNIST under ASHA, early stopping, resume."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from ganray.config import ConfigError, debug
from ganray.tune import GANStopper, apply_params, load_search_file, validate_space

SEARCH = {
    "space": {"optim.lr_d": {"grid": [2e-4, 1e-3, 5e-4, 5.0]}},
    "stopping": {"patience": 2, "min_delta": 0.0, "d_gap": 6.0, "d_gap_reports": 2, "fid_ceiling": None},
}


def _base_args(out, mnist_dir, classifier):
    return ["--preset", "debug", "--data", str(mnist_dir), "--out", str(out), "--kimg", "0.64",
            "--set", "eval.features=classifier", "--set", f"eval.classifier_path={classifier}", "--set", "eval.fid_samples=256", "--set", "eval.every_kimg=0.128",
            "--set", "train.steps=null", "--set", "optim.lr_g=1e-3"]


@pytest.fixture(scope="module")
def experiment(ray_session, tmp_path_factory, mnist_dir, mnist_classifier16):
    from ganray.cli import main

    out = tmp_path_factory.mktemp("tune")
    search = out / "search.yaml"
    search.write_text(yaml.safe_dump(SEARCH))
    rc = main(["tune", *_base_args(out, mnist_dir, mnist_classifier16), "--search", str(search), "--num-samples", "1",
               "--scheduler", "asha", "--max-concurrent", "2", "--name", "exp"])
    assert rc == 0
    return out / "exp"


def test_results_tables_and_best_config(experiment):
    table = pd.read_csv(experiment / "results.csv")
    assert len(table) == 4
    assert set(pd.read_parquet(experiment / "results.parquet").columns) >= {"trial_id", "best_fid", "kimg", "stop_reason"}
    assert (experiment / "trials.png").stat().st_size > 1000
    assert table["checkpoint"].astype(str).str.contains("checkpoint_").all()
    best = yaml.safe_load((experiment / "best_config.yaml").read_text())
    assert best["optim"]["lr_d"] == table.iloc[0]["optim.lr_d"]  # sorted by best FID
    from ganray.config import from_dict

    from_dict(best)  # `ganray train --config` accepts it as is


def test_trials_share_the_experiments_dataset_and_eval_statistics(experiment):
    """The experiment loads data and real statistics once; no trial loads its own (start-up, #8)."""
    import json

    from ganray.startup import startup_breakdown
    from ganray.tune_run import shares_inputs

    timings = [json.loads(t.read_text()) for t in (experiment / "runs").glob("*/timing.json")]
    assert len(timings) == 4
    for marks in timings:
        phases = startup_breakdown(marks)
        # A real load (a Ray Data materialisation, a classifier, real statistics) takes >> 50 ms.
        assert phases["dataset_s"] < 0.05 and phases["eval_prepare_s"] < 0.05, phases
        assert "trial_imports_s" in phases  # start-up is counted from the trial function's entry
        assert "worker_group_start_s" in phases and "trainer_build_s" in phases  # the trial marks fit_start
    assert shares_inputs(SEARCH["space"])
    assert not shares_inputs({"optim.lr_d": {"grid": [1e-4]}, "data.resolution": {"choice": [16, 32]}})
    assert not shares_inputs({"eval.fid_samples": {"choice": [256, 512]}})


def test_benchmark_reads_each_trials_startup(experiment):
    """benchmarks/common.trial_startups (used by run.py and tune_asha.py) on the 4 trials' run folders."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from common import trial_startups, turnovers

    trials = trial_startups(experiment / "runs")
    assert len(trials) == 4 and len(turnovers(trials)) == 3
    assert [t["first_step"] for t in trials] == sorted(t["first_step"] for t in trials)
    for t in trials:
        assert 0 < t["breakdown"]["total_s"] < 300 and t["metrics"].name == "metrics.csv"


def test_diverging_trial_stopped_early_with_reason(experiment):
    table = pd.read_csv(experiment / "results.csv")
    bad = table[table["optim.lr_d"] == 5.0].iloc[0]
    assert bad["stop_reason"] in {"d_won", "diverged_nan", "fid_ceiling", "plateau", "error", "asha"}
    assert bad["kimg"] < 0.64


def test_asha_or_stopper_ends_some_trial_before_the_maximum(experiment):
    table = pd.read_csv(experiment / "results.csv")
    early = table[table["kimg"] < 0.64 - 1e-9]
    assert len(early) >= 1
    assert set(early["stop_reason"]) <= {"asha", "plateau", "d_won", "diverged_nan", "fid_ceiling", "error"}


def test_stopper_rules():
    s = GANStopper(patience=2, min_delta=0.1, d_gap=5.0, d_gap_reports=2, fid_ceiling=100, warmup_kimg=1.0)
    assert s.reason("a", {"loss_d": float("nan")}) == "diverged_nan"
    assert s.reason("b", {"d_real": 9.0, "d_fake": -1.0}) is None
    assert s.reason("b", {"d_real": 9.0, "d_fake": -1.0}) == "d_won"
    assert s.reason("c", {"fid": 500.0, "kimg": 0.5}) is None  # inside the warm-up
    assert s.reason("c", {"fid": 500.0, "kimg": 2.0}) == "fid_ceiling"
    assert [s.reason("d", {"fid": f, "kimg": 2}) for f in (50.0, 48.0, 47.0)] == [None, None, "plateau"]


def test_bad_search_space_rejected_before_ray(tmp_path):
    base = debug()
    with pytest.raises(ConfigError, match="optim.nope"):
        validate_space({"optim.nope": {"choice": [1]}}, base)
    with pytest.raises(ConfigError, match="optim.lr_g"):
        validate_space({"optim.lr_g": {"choice": [-1.0]}}, base)
    with pytest.raises(ConfigError, match="loguniform"):
        validate_space({"optim.lr_g": {"loguniform": [1e-4]}}, base)
    f = tmp_path / "s.yaml"
    f.write_text("space:\n  optim.lr_g: {uniform: [1e-4, 1e-3]}\nstopping:\n  bogus: 1\n")
    with pytest.raises(ConfigError, match="bogus"):
        load_search_file(str(f))
    assert apply_params(base, {"optim.lr_g": 1e-3}).optim.lr_g == 1e-3


def test_grace_kimg_is_the_first_rung_and_has_an_evaluation():
    from ganray.tune_run import make_scheduler, tune_base_config

    base = debug()
    base.eval.features, base.train.kimg, base.eval.every_kimg = "classifier", 60.0, 100.0
    assert tune_base_config(base).eval.every_kimg == 10.0  # kimg / 6: rungs need evaluations
    assert tune_base_config(base, 4.0).eval.every_kimg == 4.0
    assert tune_base_config(base, 20.0).eval.every_kimg == 10.0
    with pytest.raises(ConfigError, match="--grace-kimg 60 is not below train.kimg 60"):
        tune_base_config(base, 60.0)
    with pytest.raises(ConfigError, match="--grace-kimg must be > 0"):
        tune_base_config(base, 0.0)
    rungs = [m for m, _ in make_scheduler("asha", 60.0, 5.0, {})._brackets[0]._rungs]
    assert sorted(rungs) == [5.0, 15.0, 45.0]  # reduction factor 3


def test_searcher_holds_the_concurrency_limit():
    """TuneConfig(max_concurrent_trials) is ignored for a BasicVariantGenerator passed in: the
    limit must sit in the searcher, or every trial starts at once."""
    from ganray.tune_run import _searcher

    assert _searcher("random", 0, 2).max_concurrent == 2
    with pytest.raises(ConfigError, match="unknown searcher"):
        _searcher("grid-of-doom", 0, 2)


def test_pbt_population_is_every_trial_unless_streaming_data_would_starve(monkeypatch):
    """PBT can copy only a live trial, so its population must exist at once: a concurrency limit
    would run it as small populations that never meet (on 2 CPUs: one trial at a time, and no
    perturbation at all). The exception: streaming data whose Ray Data tasks need a free CPU."""
    import ray

    from ganray.tune_run import make_scheduler, pbt_population_limit, run_tune, trial_resources

    def cluster(**res):
        monkeypatch.setattr(ray, "cluster_resources", lambda: res)

    cluster(CPU=2.0)
    assert pbt_population_limit(streams=False, use_gpu=False) == 0
    assert pbt_population_limit(streams=True, use_gpu=False) == 1
    cluster(CPU=16.0)
    assert pbt_population_limit(streams=True, use_gpu=False) == 15
    cluster(CPU=16.0, GPU=4.0)  # GPU trials fill the GPUs first: 12 CPUs stay free
    assert pbt_population_limit(streams=True, use_gpu=True) == 0
    cluster(CPU=4.0, GPU=8.0)
    assert pbt_population_limit(streams=True, use_gpu=True) == 3
    assert trial_resources(True, True) == {"cpu": 1, "gpu": 1}
    assert trial_resources(True, False) == {"cpu": 1}
    assert trial_resources(False, True)["cpu"] < 1 and "gpu" not in trial_resources(False, True)
    # A grid key is mutated among its values: a grid alone is a valid PBT space.
    sched = make_scheduler("pbt", 10.0, 1.0, {"optim.lr_g": {"grid": [1e-3, 1e-4]}})
    assert sched._hyperparam_mutations == {"optim.lr_g": [1e-3, 1e-4]}
    base = debug()
    base.eval.features = "classifier"
    with pytest.raises(ConfigError, match="--max-concurrent does not apply to --scheduler pbt"):
        run_tune(base, {"optim.lr_g": {"grid": [1e-3]}}, {}, name="x", scheduler="pbt", max_concurrent_trials=2)
    with pytest.raises(ConfigError, match="--workers-per-trial 1"):
        run_tune(base, {"optim.lr_g": {"grid": [1e-3]}}, {}, name="x", scheduler="pbt", workers_per_trial=2)
    with pytest.raises(ConfigError, match="cannot search data.. or eval.. keys"):
        run_tune(base, {"eval.fid_samples": {"grid": [256, 512]}}, {}, name="x", scheduler="pbt")


def test_trials_share_a_nodes_cores_instead_of_each_taking_all(monkeypatch):
    import ray

    from ganray.tune_run import population, trial_threads

    def cluster(nodes: int, cpus_each: float):
        monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": cpus_each}}] * nodes
                            + [{"Alive": False, "Resources": {"CPU": 64.0}}])
        monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": nodes * cpus_each})

    cluster(1, 2.0)
    assert trial_threads(running=1, workers_per_trial=1) == 2  # one trial at a time: every core
    assert trial_threads(running=2, workers_per_trial=1) == 1
    cluster(1, 16.0)
    assert trial_threads(running=13, workers_per_trial=1) == 1  # not 16 each: 208 threads
    assert trial_threads(running=2, workers_per_trial=2) == 4
    cluster(2, 16.0)
    assert trial_threads(running=4, workers_per_trial=1) == 8  # two trials on each node
    assert population({"optim.lr_g": {"grid": [1, 2, 3]}, "optim.beta1": {"grid": [0.0, 0.5]},
                       "optim.lr_d": {"loguniform": [1e-4, 1e-3]}}, 2) == 12


def test_pbt_exploits_checkpoints_of_single_worker_trials(ray_session, tmp_path, mnist_dir, mnist_classifier16):
    from ganray.config import load_config
    from ganray.tune_run import run_tune

    # 20 evaluations a trial (~15 s here): the two trials must overlap for PBT to act, since a
    # trial can copy only a live one and the second starts up to a few seconds after the first
    # (with 6, ~1 s, the first once finished before the second's first result: no exploit, a CI flake).
    base = load_config(None, ["data.source=" + str(mnist_dir), f"run.out={tmp_path}", "train.steps=null",
                              "train.kimg=1.28", "eval.features=classifier", "eval.fid_samples=256",
                              f"eval.classifier_path={mnist_classifier16}",
                              "eval.every_kimg=0.064"], preset="debug")
    # One trial learns, the other's G barely moves (lr_g 1e-7): ranked, and both finite. A
    # diverging trial (lr 5.0) is no use here: its NaN stops it, and PBT exploits only live trials.
    # A grid alone is enough for PBT: it mutates a grid key among its values.
    space = {"optim.lr_g": {"grid": [1e-3, 1e-7]}}
    stopping = {"patience": 100, "min_delta": 0.0, "fid_ceiling": None, "warmup_kimg": 0.0, "d_gap": 1e9,
                "d_gap_reports": 100, "target_fid": None}
    summary = run_tune(base, space, stopping, name="pbt", num_samples=1, scheduler="pbt", seed=0, verbose=0)
    assert len(summary["table"]) == 2
    assert summary["pbt_perturbations"] >= 1
    # An exploited trial continued from the other trial's checkpoint: its checkpoints are Tune's.
    assert all(summary["table"]["kimg"] >= 1.28 - 1e-9)


def _kill_tree_with(path: str) -> None:
    """SIGKILL every process whose command line names `path` (the driver's own Ray temp dir)."""
    import os
    import signal

    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if path.encode() in f.read():
                    os.kill(int(pid), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def test_killed_tune_driver_resumes_remaining_trials(tmp_path, mnist_dir, mnist_classifier16):
    """Fault: the `ganray tune` driver is SIGKILLed mid-search; `--resume` finishes every trial."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="gr-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1"}
    search = tmp_path / "s.yaml"
    # No early stopping here: every trial must run to the end after the resume.
    search.write_text(yaml.safe_dump({"space": {"optim.lr_d": {"grid": [2e-4, 1e-3]}},
                                      "stopping": {"patience": 1000, "d_gap": 1e9}}))
    cmd = [sys.executable, "-m", "ganray.cli", "tune", *_base_args(tmp_path, mnist_dir, mnist_classifier16), "--search", str(search),
           "--num-samples", "1", "--scheduler", "fifo", "--max-concurrent", "1", "--name", "exp"]
    cmd[cmd.index("0.64")] = "0.512"
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    runs = tmp_path / "exp" / "runs"
    deadline = time.time() + 300
    try:
        # Kill once the second trial has its first checkpoint (the first trial is finished by then).
        while time.time() < deadline and not (runs.is_dir() and sum(1 for d in runs.iterdir() if list(d.glob("checkpoint_*"))) >= 2):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.5)
        assert time.time() < deadline, "no checkpoint appeared in time"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        _kill_tree_with(ray_tmp)
        proc.wait(30)
        log.close()
    try:
        done = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=420,
                              start_new_session=True)
    finally:
        _kill_tree_with(ray_tmp)
        import shutil

        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_csv(tmp_path / "exp" / "results.csv")
    assert len(table) == 2 and (table["kimg"] >= 0.512 - 1e-9).all()
    for run in runs.iterdir():
        steps = [int(s) for s in pd.read_csv(run / "metrics.csv")["step"]]
        assert steps == sorted(set(steps)), f"{run.name}: repeated or unordered steps {steps}"
