"""ganray's performance benchmarks: one entry point, a printed table, a JSON file.

    python benchmarks/run.py [--quick] [--json FILE] [--only NAME,...] [--data SOURCE] [--threads N]

Each measurement is a ratio (or a time) taken in one run on one machine, with the load average
before and after next to it; on a busy machine the numbers are noise, so read the load first.

    overhead  (a) ganray, 1 worker, vs benchmarks/plain_loop.py (same model, step math, threads,
              steps), at 1 thread and at all cores: steady img/s from metrics.csv (first report
              skipped) and from summary.json; (c) data_wait_frac of that run. A third arm runs the
              plain loop beside an idle Ray Train job (benchmarks/ray_idle.py), which splits the
              ratio into what Ray's runtime costs any loop and what ganray's worker adds
    scaling   (b) 2 workers x 1 thread vs 1 worker x 1 thread (train.threads_per_worker=1), beside
              plain PyTorch DDP in 2 processes vs 1 process
    Both run --rounds alternating rounds (ABBA..., ABCCBA...) and report the median of the ratios.
    floor     (not in the default set) one plain loop beside an idle Ray Train job whose processes
              are stopped and resumed in 6-s phases (benchmarks/ray_phases.py): beside Ray / alone
              and beside the least any Ray Train job keeps / alone, at --threads; the most any
              worker on Ray Train can reach against the plain loop here
    ingest    (c) Ray Data vs torch DataLoader, with and without shuffling (benchmarks/data_ingest.py)
    startup   (d) command start -> first training step, with the phase breakdown from summary.json
    tune      (e) Tune trial start -> first training step, against the length of a default trial
    pbt       a PBT search of 4 trials on fewer CPUs: wall time, pace and exploits
    eval      (f) FID evaluation's share of training time; frechet_distance on 2048-d statistics
    gpu       img/s plain vs ganray at 64 px, fp32 vs bf16, feature throughput (benchmarks/gpu_check.sh)

The model is DCGAN at 32x32 (width 64, batch 64) on the MNIST test set, unless --quick
(width 16, batch 32, a few steps: checks that everything runs, measures nothing worth keeping).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from common import (  # noqa: E402
    REPO,
    Row,
    default_source,
    load_avg,
    machine,
    print_table,
    alternating,
    ganray_cores,
    idle_ray,
    median_ratio,
    ratio_row,
    run_ganray,
    run_plain,
    steady,
    trial_startups,
    turnovers,
)



def _defaults() -> tuple[float, float, float]:
    """(kimg of a default run or trial, its evaluation interval, a default Tune trial's interval)."""
    from ganray.config import Config
    from ganray.tune_run import tune_base_config

    cfg = Config()
    return (cfg.train.kimg, cfg.eval.every_kimg or cfg.train.checkpoint_every_kimg,
            tune_base_config(cfg).eval.every_kimg)


DEFAULT_TRIAL_KIMG, DEFAULT_EVAL_EVERY_KIMG, TUNE_EVAL_EVERY_KIMG = _defaults()


@dataclass
class Size:
    width: int
    batch: int
    steps: int  # overhead runs
    report: int  # steps per metrics.csv row
    scaling_steps: int
    fid_samples: int
    fid_repeats: int
    ingest_epochs: int
    startup_runs: int


FULL = Size(width=64, batch=64, steps=248, report=31, scaling_steps=100, fid_samples=10_000, fid_repeats=3,
            ingest_epochs=3, startup_runs=2)
QUICK = Size(width=16, batch=32, steps=30, report=10, scaling_steps=20, fid_samples=2048, fid_repeats=1,
             ingest_epochs=1, startup_runs=1)


@dataclass
class Ctx:
    size: Size
    source: str
    threads: int
    out: Path
    quick: bool
    device: str = "cpu"
    details: dict = field(default_factory=dict)
    overhead_threads: tuple[int, ...] = ()
    rounds: int = 1  # overhead and scaling: pairs run alternating; their ratios' median is the result

    def model(self, batch: int | None = None) -> list[str]:
        """Size overrides; overhead and scaling put them on the `dcgan` preset (SPEED_PRESET), so a
        change to the default preset cannot move the model they measure. Unconditional: the plain
        loop it is compared with has no labels."""
        s = self.size
        return [f"data.source={self.source}", "data.resolution=32", "model.conditional=false", f"model.g_width={s.width}",
                f"model.d_width={s.width}", f"train.batch_size_per_worker={batch or s.batch}"]

    def default_model(self) -> list[str]:
        """The `ganray train` defaults (mnist preset) for eval and Tune; the tiny model with --quick."""
        return self.model() if self.quick else [f"data.source={self.source}"]

    def every(self, steps: int, batch: int | None = None) -> str:
        return f"{steps * (batch or self.size.batch) / 1000:.6f}"


SPEED_PRESET = "dcgan"  # the seed's DCGAN: BatchNorm D, no spectral norm, no R1


def _ganray_len(ctx: Ctx, steps: int, report: int, batch: int | None = None) -> list[str]:
    return ["train.kimg=null", f"train.steps={steps}", f"train.report_every_kimg={ctx.every(report, batch)}",
            "train.checkpoint_every_kimg=1e6", "eval.features=none"]


def bench_overhead(ctx: Ctx) -> list[Row]:
    """At 1 thread (Ray Train's own cost: a core is left for Ray's background processes) and at
    all cores (the default `train.threads_per_worker` of one worker, whose threads then share
    the cores with those processes); one count with --threads or --quick."""
    rows: list[Row] = []
    for threads in ctx.overhead_threads:
        rows += _overhead_at(ctx, threads)
    return rows


def _overhead_at(ctx: Ctx, threads: int) -> list[Row]:
    """`ctx.rounds` rounds of the plain loop, the plain loop beside an idle Ray Train job
    (benchmarks/ray_idle.py: Ray's runtime of a one-worker run, pinned as ganray's worker would
    be) and ganray, alternating (ABCCBA...); the target row is the median of the pairs' ratios
    ganray / plain."""
    s = ctx.size
    model = ctx.model() + [f"train.threads_per_worker={threads}", "eval.features=none"]

    def plain(i: int) -> dict:
        return run_plain(model, steps=s.steps, report_every=s.report, threads=threads, out=ctx.out,
                         name=f"plain{threads}_{i}", preset=SPEED_PRESET)

    def beside(i: int) -> dict:
        with idle_ray(threads, ctx.out, f"idle{threads}_{i}"):
            return run_plain(model, steps=s.steps, report_every=s.report, threads=threads, out=ctx.out,
                             name=f"beside{threads}_{i}", preset=SPEED_PRESET, cores=ganray_cores(threads))

    def ganray(i: int):
        return run_ganray(ctx.out, f"overhead{threads}_{i}", ctx.model() + _ganray_len(ctx, s.steps, s.report)
                          + [f"train.threads_per_worker={threads}", "train.workers=1"], preset=SPEED_PRESET)

    rounds = alternating(ctx.rounds, plain, beside, ganray)
    plains = [p for p, _, _ in rounds]
    besides = [b for _, b, _ in rounds]
    steadies = [steady(run.rows, s.batch) for _, _, run in rounds]
    ganrays = [st["img_per_s"] for st in steadies]
    rate, ratios = median_ratio(ganrays, [p["img_per_s"] for p in plains])
    floor, floors = median_ratio([b["img_per_s"] for b in besides], [p["img_per_s"] for p in plains])
    own, owns = median_ratio(ganrays, [b["img_per_s"] for b in besides])
    whole, _ = median_ratio([run.summary["img_per_s"] for _, _, run in rounds],
                            [p["steps"] * p["batch"] / p["wall_s"] for p in plains])
    best, _ = median_ratio([st["best_img_per_s"] for st in steadies], [p["best_img_per_s"] for p in plains])
    waits = [st["data_wait_frac"] for st in steadies if st["data_wait_frac"] is not None]
    wait = max(waits) if waits else None
    ctx.details.setdefault("overhead", {})[f"{threads}_threads"] = {
        "plain": plains, "plain_beside_ray": besides, "ganray_steady": steadies, "ratios": ratios,
        "beside_ratios": floors, "ganray_over_beside_ratios": owns,
        "ganray_summary": [run.summary for _, _, run in rounds], "ganray_rows": [run.rows for _, _, run in rounds]}
    note = f"{s.steps} steps, batch {s.batch}, width {s.width}, report every {s.report} steps"
    t = f"{threads} thread{'s' if threads > 1 else ''}"
    pin = ganray_cores(threads)
    return [
        Row("overhead", f"plain loop img/s (steady, mean), {t}", _mean([p["img_per_s"] for p in plains]), "img/s",
            note=note),
        Row("overhead", f"plain loop beside idle Ray Train img/s, {t}", _mean([b["img_per_s"] for b in besides]),
            "img/s", note=f"pinned to cores {pin}, as ganray's worker" if pin else "unpinned, as ganray's worker"),
        Row("overhead", f"ganray 1 worker img/s (steady, mean), {t}", _mean(ganrays), "img/s"),
        Row("overhead", f"ganray / plain, steady (metrics.csv), {t}", rate, "x", ">= 0.97",
            None if rate is None else rate >= 0.97, _rounds_note(ratios)),
        Row("overhead", f"plain beside idle Ray / plain, {t}", floor, "x",
            note="what Ray's runtime costs any loop here; " + _rounds_note(floors)),
        Row("overhead", f"ganray / plain beside idle Ray, {t}", own, "x",
            note="ganray's worker beyond Ray's runtime; " + _rounds_note(owns)),
        Row("overhead", f"ganray / plain, whole run (summary.json), {t}", whole, "x", ">= 0.97",
            None if whole is None else whole >= 0.97, "median; includes first step and reports"),
        Row("overhead", f"ganray / plain, fastest window each, {t}", best, "x", ">= 0.97",
            None if best is None else best >= 0.97, "median; the estimate to read on a busy machine"),
        Row("data", f"data_wait_frac, steady (metrics.csv), {t}", wait, "", "<= 0.02",
            None if wait is None else wait <= 0.02, "the highest of the rounds" if len(waits) > 1 else ""),
    ]


def bench_floor(ctx: Ctx) -> list[Row]:
    """benchmarks/ray_phases.py at `ctx.threads`: one plain loop beside an idle one-worker Ray
    Train job whose processes are stopped and resumed in phases of a few seconds, so that the
    VM's drift between minutes cancels out. No worker on Ray Train can beat the plain loop
    beside Ray's runtime, so these ratios bound what ganray / plain can reach here."""
    threads, out = ctx.threads, ctx.out / f"floor{ctx.threads}.json"
    steps = 400 if ctx.quick else 1200 * threads  # about 6 minutes at the full size
    phase = ["--phase-s", "0.5", "--settle-s", "0.1"] if ctx.quick else []
    cmd = [sys.executable, str(REPO / "benchmarks" / "ray_phases.py"), "--json", str(out), "--threads", str(threads),
           "--steps", str(steps), "--preset", SPEED_PRESET, *phase]
    for override in ctx.model():
        cmd += ["--set", override]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"ray_phases.py failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-1500:]}")
    got = json.loads(out.read_text())
    ctx.details["floor"] = got
    t = f"{threads} thread{'s' if threads > 1 else ''}"
    job = got["job_cpu_cores"]

    def note(key: str) -> str:
        return _rounds_note(got["ratios"][key], "cycle")

    return [
        Row("floor", f"plain loop img/s (steady, mean), {t}", got["plain_img_per_s"], "img/s",
            note=f"phases of {got['phase_s']:g} s; pinned to cores {got['cores']}" if got["cores"] else
            f"phases of {got['phase_s']:g} s; unpinned"),
        Row("floor", f"beside idle Ray Train / alone, {t}", got["median"]["B/A"], "x",
            note=f"Ray's processes at {job['B']:.3f} cores; " + note("B/A")),
        Row("floor", f"beside Ray Train's least / alone, {t}", got["median"]["C/A"], "x",
            note=f"helpers stopped, the rest at {job['C']:.3f} cores; " + note("C/A")),
    ]


def _mean(values: list[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return sum(found) / len(found) if found else None


def _rounds_note(ratios: list[float | None], unit: str = "pair") -> str:
    if len(ratios) <= 1:
        return f"{'one' if ratios else 'no'} {unit}"
    return f"median of {len(ratios)} {unit}s: " + ", ".join("-" if r is None else f"{r:.3f}" for r in ratios)


def bench_scaling(ctx: Ctx) -> list[Row]:
    """ganray 2 workers / 1 worker, both at 1 thread each, and beside it the same ratio for plain
    PyTorch (one process, and DDP over gloo in two): how much of the machine's own DDP scaling
    ganray keeps. Each round runs ganray 1, ganray 2, plain 2, plain 1 (the next round in the
    mirror order), so a slow drift in the machine's speed tilts the two ratios the same way;
    the target row is the median of the rounds' ratios."""
    s = ctx.size
    n = s.scaling_steps

    def ganray(i: int) -> dict:
        rates = {}
        for workers in (1, 2) if i % 2 == 0 else (2, 1):
            run = run_ganray(ctx.out, f"scaling{workers}_{i}", ctx.model() + _ganray_len(ctx, n, s.report // 2)
                             + ["train.threads_per_worker=1", f"train.workers={workers}"], preset=SPEED_PRESET)
            rates[workers] = steady(run.rows, s.batch * workers)
        return rates

    def plain(i: int) -> dict:
        model = ctx.model() + ["eval.features=none"]
        return {workers: run_plain(model, steps=n, report_every=s.report // 2, threads=1, out=ctx.out,
                                   name=f"scaling_plain{workers}_{i}", preset=SPEED_PRESET, workers=workers)
                for workers in ((2, 1) if i % 2 == 0 else (1, 2))}

    rounds = alternating(ctx.rounds, ganray, plain)
    g1 = [g[1]["img_per_s"] for g, _ in rounds]
    g2 = [g[2]["img_per_s"] for g, _ in rounds]
    p1 = [p[1]["img_per_s"] for _, p in rounds]
    p2 = [p[2]["img_per_s"] for _, p in rounds]
    ganray_ratio, ganray_ratios = median_ratio(g2, g1)
    plain_ratio, plain_ratios = median_ratio(p2, p1)
    share, _ = median_ratio(ganray_ratios, plain_ratios)
    ctx.details["scaling"] = {"rounds": [{"ganray": g, "plain": p} for g, p in rounds],
                              "ganray_ratios": ganray_ratios, "plain_ratios": plain_ratios}
    return [
        Row("scaling", "1 worker x 1 thread img/s (steady, mean)", _mean(g1), "img/s", note=f"{n} steps"),
        Row("scaling", "2 workers x 1 thread img/s (steady, mean)", _mean(g2), "img/s"),
        Row("scaling", "2 workers / 1 worker", ganray_ratio, "x", ">= 1.8",
            None if ganray_ratio is None else ganray_ratio >= 1.8,
            _rounds_note(ganray_ratios) + "; meaningful only on an otherwise idle machine"),
        Row("scaling", "plain PyTorch, 1 process x 1 thread img/s (mean)", _mean(p1), "img/s"),
        Row("scaling", "plain PyTorch DDP, 2 processes x 1 thread img/s (mean)", _mean(p2), "img/s",
            note="gloo, no Ray"),
        Row("scaling", "plain DDP 2 / plain 1 (the machine's own DDP scaling)", plain_ratio, "x",
            note=_rounds_note(plain_ratios)),
        Row("scaling", "ganray 1 worker / plain 1 process", median_ratio(g1, p1)[0], "x", note="median"),
        Row("scaling", "ganray 2 workers / plain DDP 2 processes", median_ratio(g2, p2)[0], "x", note="median"),
        Row("scaling", "ganray's scaling / plain DDP's", share, "x",
            note="median; 1.0: ganray keeps all of what DDP gets here"),
    ]


def bench_ingest(ctx: Ctx) -> list[Row]:
    path = ctx.out / "ingest.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "data_ingest.py"), "--source", ctx.source,
           "--epochs", str(ctx.size.ingest_epochs), "--warmup", "0" if ctx.quick else "1", "--json", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"data_ingest.py failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(path.read_text())
    ctx.details["ingest"] = out
    rows = [Row("ingest", f"{r['pipeline'][:30]}, shuffle {r['shuffle'][:12]}", r["rows_per_s"], "rows/s")
            for r in out["results"]]
    by = {(r["pipeline"], r["shuffle"] == "none"): r["rows_per_s"] for r in out["results"]}
    loader = [k for k in by if k[0].startswith("torch DataLoader")]
    for prefix, label in (("ray streaming_split", "ray shard"), ("ganray worker", "ganray worker")):
        ours = [k for k in by if k[0].startswith(prefix)]
        for plain in (True, False):
            num = next((by[k] for k in ours if k[1] == plain), None)
            den = next((by[k] for k in loader if k[1] == plain), None)
            which = "no shuffle" if plain else "shuffled"
            if label == "ganray worker":  # the input the training step gets: target 3b
                rows.append(ratio_row("ingest", f"{label} / DataLoader, {which}", num, den, at_least=1.0))
            else:
                rows.append(Row("ingest", f"{label} / DataLoader, {which}", num / den if num and den else None, "x"))
    rows.append(Row("ingest", "load_dataset (plan + materialise)", out.get("load_dataset_s"), "s"))
    return rows


def bench_startup(ctx: Ctx) -> list[Row]:
    """Default config (evaluation on when the data has labels) for one step; the last run counts."""
    overrides = [f"data.source={ctx.source}", "train.kimg=null", "train.steps=1"]
    if ctx.quick:
        overrides += ["eval.features=none"]
    runs = []
    for i in range(ctx.size.startup_runs):
        runs.append(run_ganray(ctx.out, f"startup{i}", overrides))
    totals = [_first_step_after(r) for r in runs]
    last = runs[-1]
    breakdown = last.summary.get("startup", {})
    ctx.details["startup"] = {"totals_s": totals, "breakdown": breakdown, "summaries": [r.summary for r in runs]}
    rows = [Row("startup", "command start -> first step", totals[-1], "s", "<= 15", totals[-1] <= 15,
                "eval off (--quick)" if ctx.quick else "default config, caches warm")]
    if len(runs) > 1:
        rows.append(Row("startup", "  the same, first run (cold caches)", totals[0], "s"))
    for phase, seconds in breakdown.items():
        if phase != "total_s":
            rows.append(Row("startup", f"  {phase[:-2]}", seconds, "s"))
    return rows


def _first_step_after(run) -> float | None:
    timing = json.loads((run.run_dir / "timing.json").read_text())
    return timing["first_step"] - run.popen_time if "first_step" in timing else None


def _tune_cli(ctx: Ctx, name: str, lr_g: list[float], args: list[str], sets: list[str]) -> None:
    """`ganray tune` on the mnist preset (the benchmark's model with --quick), one trial per
    `optim.lr_g` value, into `<out>/<name>`; raises with its stderr if it fails."""
    import yaml

    search = ctx.out / f"{name}.yaml"
    search.write_text(yaml.safe_dump({"space": {"optim.lr_g": {"grid": lr_g}}}))
    cmd = [sys.executable, "-m", "ganray.cli", "tune", "--preset", "mnist", "--data", ctx.source, "--search", str(search),
           "--num-samples", "1", "--out", str(ctx.out), "--name", name, *args]
    for o in ctx.default_model()[1:] + sets:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"ganray tune ({name}) failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def bench_tune(ctx: Ctx) -> list[Row]:
    s = ctx.size
    batch = _batch(ctx.default_model())
    t0 = time.time()
    _tune_cli(ctx, "tune", [0.0002, 0.00015, 0.0001, 0.00005],  # 4 sequential trials
              ["--scheduler", "fifo", "--max-concurrent", "1", "--kimg", ctx.every(2 * s.report, batch)],
              [f"eval.every_kimg={ctx.every(s.report, batch)}", f"eval.fid_samples={min(s.fid_samples, 2048)}"])
    trials = [{**t, "start_to_first_step_s": t["breakdown"]["total_s"],
               "img_per_s": steady(_rows(t.pop("metrics")), batch)["img_per_s"]}
              for t in trial_startups(ctx.out / "tune" / "runs")]
    if not trials:
        raise RuntimeError("ganray tune wrote no timing.json under its trials' run folders")
    per_trial = sum(t["start_to_first_step_s"] for t in trials) / len(trials)
    turnover = turnovers(trials)
    rate = ctx.details.get("default_img_per_s") or trials[-1]["img_per_s"]
    default_trial_s = DEFAULT_TRIAL_KIMG * 1000 / rate if rate else None
    ctx.details["tune"] = {"trials": trials, "turnover_s": turnover, "first_trial_after_cmd_s": trials[0]["first_step"] - t0,
                           "default_trial_train_s": default_trial_s}
    frac = per_trial / default_trial_s if default_trial_s else None
    rows = [Row("tune", "trial start -> first step (mean)", per_trial, "s", note=f"{len(trials)} trials, sequential"),
            Row("tune", f"  as a share of a default trial ({DEFAULT_TRIAL_KIMG:g} kimg)", frac, "", "<= 0.10",
                None if frac is None else frac <= 0.10, f"trial trains ~{default_trial_s or 0:.0f} s at {rate or 0:.0f} img/s")]
    for phase in trials[0]["breakdown"]:
        if phase != "total_s":
            mean = sum(t["breakdown"].get(phase, 0.0) for t in trials) / len(trials)
            rows.append(Row("tune", f"    {phase[:-2]} (mean)", mean, "s"))
    if turnover:
        rows.append(Row("tune", "  previous trial's last report -> next first step", sum(turnover) / len(turnover), "s"))
    rows.append(Row("tune", "  command start -> first trial's first step", trials[0]["first_step"] - t0, "s"))
    return rows


def bench_pbt(ctx: Ctx) -> list[Row]:
    """A PBT search whose population (4 trials) outnumbers the CPUs, so Tune gives trials turns
    and every exploit or turn restarts one: the search's wall time and its pace, seconds per
    evaluation interval trained (whatever PBT decided to copy)."""
    s = ctx.size
    kimg = ctx.every(4 * s.report, _batch(ctx.default_model()))
    t0 = time.perf_counter()
    _tune_cli(ctx, "pbt", [0.0004, 0.0002, 0.0001, 0.00005], ["--scheduler", "pbt", "--search-seed", "0", "--kimg", kimg],
              [f"eval.fid_samples={min(s.fid_samples, 1024)}"])
    wall = time.perf_counter() - t0
    exp = ctx.out / "pbt"
    metrics = list(exp.glob("runs/*/metrics.csv"))
    # Evaluations each trial trained itself (its run folder keeps its own rows up to a copied step).
    evals = sum(sum(1 for r in _rows(m) if "fid" in r) for m in metrics)
    global_log = exp / "pbt_global.txt"
    perturbations = len(global_log.read_text().splitlines()) if global_log.exists() else 0
    trials = len(metrics)
    ctx.details["pbt"] = {"wall_s": wall, "evaluations": evals, "perturbations": perturbations, "trials": trials}
    return [Row("pbt", "search wall time", wall, "s", note=f"{trials} trials of {float(kimg):g} kimg, {os.cpu_count()} CPUs"),
            Row("pbt", "  seconds per evaluation interval trained", wall / evals if evals else None, "s",
                note=f"{evals} evaluations"),
            Row("pbt", "  perturbations (exploits)", perturbations, "")]


def _batch(overrides: list[str]) -> int:
    from ganray.config import load_config

    return load_config(None, overrides).train.batch_size_per_worker


def _rows(path: Path) -> list[dict]:
    from common import read_metrics

    return read_metrics(path)


def bench_eval(ctx: Ctx) -> list[Row]:
    rows = _frechet_rows(ctx)
    s = ctx.size
    try:
        import ganray.metrics.training  # noqa: F401  (the evaluation wired into training)
    except ImportError:
        return rows + [Row("eval", "evaluation share of training", None, note="skipped: ganray.metrics.training missing")]
    model = ctx.default_model()
    batch = _batch(model)
    run = run_ganray(ctx.out, "eval", model + ["train.kimg=null", f"train.steps={4 * s.report}",
                     f"train.report_every_kimg={ctx.every(s.report, batch)}",
                     f"eval.every_kimg={ctx.every(s.report, batch)}", "train.checkpoint_every_kimg=1e6",
                     "eval.features=auto", f"eval.fid_samples={s.fid_samples}"])
    evals = [r["eval_s"] for r in run.rows if "eval_s" in r]
    if not evals:
        return rows + [Row("eval", "evaluation share of training", None, note="skipped: no eval_s column (no labels?)")]
    per_eval = sum(evals) / len(evals)
    rate = steady(run.rows, batch)["img_per_s"]  # report windows exclude the evaluations
    ctx.details["default_img_per_s"] = rate
    wall = run.rows[-1]["wall_s"] + evals[-1]

    def share(every_kimg: float) -> float:
        return per_eval / (per_eval + every_kimg * 1000 / rate)

    ctx.details["eval"] = {"eval_s": evals, "img_per_s": rate, "rows": run.rows}
    return rows + [
        Row("eval", f"seconds per evaluation ({s.fid_samples} samples)", per_eval, "s"),
        Row("eval", f"  share at the default interval ({DEFAULT_EVAL_EVERY_KIMG:g} kimg)", share(DEFAULT_EVAL_EVERY_KIMG),
            "", note=f"training at {rate:.0f} img/s"),
        Row("eval", f"  share at Tune's interval ({TUNE_EVAL_EVERY_KIMG:g} kimg)", share(TUNE_EVAL_EVERY_KIMG), ""),
        Row("eval", "  share in this run (evaluating every report)", sum(evals) / wall, ""),
    ]


def _frechet_rows(ctx: Ctx) -> list[Row]:
    import numpy as np

    from ganray.metrics.fid import frechet_distance

    rng = np.random.default_rng(0)
    d, n = 2048, 4096
    stats = []
    for _ in range(2):  # two full-rank covariances of 4096 correlated 2048-d features
        x = rng.standard_normal((n, d)) @ (np.eye(d) + 0.1 * rng.standard_normal((d, d)) / np.sqrt(d))
        stats.append((x.mean(0), np.cov(x, rowvar=False)))
    from threadpoolctl import threadpool_limits

    def timed(threads: int | None) -> float:
        times = []
        with threadpool_limits(limits=threads):
            for _ in range(ctx.size.fid_repeats):
                t0 = time.perf_counter()
                frechet_distance(stats[0][0], stats[0][1], stats[1][0], stats[1][1])
                times.append(time.perf_counter() - t0)
        return min(times)

    # One BLAS thread too: on a busy machine multi-threaded BLAS spin-waits and can be slower.
    return [Row("eval", "frechet_distance, 2048-d statistics", timed(None), "s",
                note=f"min of {ctx.size.fid_repeats}, default BLAS threads"),
            Row("eval", "  the same with 1 BLAS thread", timed(1), "s")]


def bench_gpu(ctx: Ctx) -> list[Row]:
    from gpu_bench import gpu_rows

    return gpu_rows(ctx)


BENCHMARKS = {"overhead": bench_overhead, "scaling": bench_scaling, "ingest": bench_ingest,
              "startup": bench_startup, "tune": bench_tune, "eval": bench_eval, "gpu": bench_gpu,
              "floor": bench_floor, "pbt": bench_pbt}
# eval before tune; gpu runs through gpu_check.sh; floor, an experiment on Ray's runtime, on its own
DEFAULT = ["overhead", "startup", "eval", "ingest", "tune", "pbt", "scaling"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the benchmarks run, measures little")
    p.add_argument("--json", type=Path, default=None, help="write the results here (default: benchmarks.json)")
    p.add_argument("--only", default=None, help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    p.add_argument("--data", default=None, help="data.source (default: the shared MNIST test set, else digits)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for overhead/eval (default: all cores; overhead also at 1 thread)")
    p.add_argument("--rounds", type=int, default=None,
                   help="overhead and scaling: alternating pairs whose median ratio counts (default 3; 1 with --quick)")
    p.add_argument("--device", default="cpu", help="gpu benchmark only: cuda or cpu (tiny sizes on cpu)")
    p.add_argument("--keep", type=Path, default=None, help="keep run folders here instead of a temp folder")
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else DEFAULT
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"run.py: error: unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    rounds = args.rounds if args.rounds is not None else 1 if args.quick else 3
    if rounds < 1:
        print(f"run.py: error: --rounds must be at least 1, got {rounds}", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="ganray-bench-") as tmp:
        out = args.keep or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        cores = os.cpu_count() or 1
        one_count = bool(args.threads or args.quick)
        ctx = Ctx(QUICK if args.quick else FULL, args.data or default_source(), args.threads or cores,
                  out, args.quick, args.device,
                  overhead_threads=(args.threads or cores,) if one_count else tuple(sorted({1, cores})),
                  rounds=rounds)
        report = {"machine": machine(), "quick": args.quick, "source": ctx.source, "started": time.strftime("%F %T"),
                  "benchmarks": {}}
        rows: list[Row] = []
        for name in names:
            before, t0 = load_avg(), time.perf_counter()
            try:
                got = BENCHMARKS[name](ctx)
            except Exception as e:  # one failing benchmark must not hide the others' numbers
                got = [Row(name, "FAILED", None, note=f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:200]}")]
                print(f"[{name}] failed: {e}", file=sys.stderr)
            rows += got
            report["benchmarks"][name] = {"rows": [r.as_dict() for r in got], "seconds": time.perf_counter() - t0,
                                          "load_avg_before": before, "load_avg_after": load_avg(),
                                          "details": ctx.details.get(name)}
            print(f"[{name}] {time.perf_counter() - t0:.0f} s, load average {before[0]} -> {load_avg()[0]}",
                  file=sys.stderr)
    m = report["machine"]
    print(f"\n{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB, GPU {m['gpu'] or 'none'}; torch {m['torch']}, "
          f"ray {m['ray']}; data {ctx.source}{' (--quick)' if args.quick else ''}")
    print_table(rows)
    path = args.json or Path("benchmarks.json")
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"results: {path}")
    return 1 if any(r.measurement == "FAILED" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
