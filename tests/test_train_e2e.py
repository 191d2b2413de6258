"""End-to-end `ganray train` / `ganray sample` on the shared Ray instance, tiny models."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from ganray.checkpoint import list_checkpoints, load_state
from ganray.cli import main

TINY = ["--preset", "debug", "--set", "eval.features=none", "--quiet"]


def _rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


_RUN_ACTORS: list[str] = []  # class names of the actors the digits run started


def _actors() -> dict:
    # GCS's actor table: Ray's state API needs the dashboard, which test sessions do not start.
    from ray._private.state import actors

    return actors()


@pytest.fixture(scope="module")
def digits_run(ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    before = set(_actors())
    # Pinned on request (the test's Ray instance is not ganray's own, so "auto" would not pin).
    rc = main(["train", *TINY, "--data", "digits", "--out", str(out), "--name", "d1", "--steps", "8",
               "--set", "train.threads_per_worker=1", "--set", "train.cpu_affinity=on"])
    assert rc == 0
    _RUN_ACTORS[:] = [a["ActorClassName"] for k, a in _actors().items() if k not in before]
    return out / "d1"


def test_run_folder_has_everything(digits_run):
    run = digits_run
    for rel in ("config.yaml", "metrics.csv", "samples/latest.png", "summary.json"):
        assert (run / rel).is_file(), rel
    rows = _rows(run)
    assert [int(r["step"]) for r in rows] == sorted({int(r["step"]) for r in rows})
    assert int(rows[-1]["step"]) == 8
    for col in ("step", "kimg", "loss_d", "loss_g", "d_real", "d_fake", "img_per_s", "data_wait_frac"):
        assert col in rows[0] and rows[-1][col] != ""
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 8
    assert summary["kimg"] == pytest.approx(8 * 16 / 1000)
    ckpts = list_checkpoints(run)
    assert ckpts, "no checkpoint written"
    state = load_state(ckpts[-1])  # weights_only=True inside
    assert state["step"] == 8 and set(state) >= {"G", "D", "G_ema", "opt_g", "opt_d", "images_seen"}
    assert (ckpts[-1] / "generator.safetensors").is_file()


def test_a_worker_with_cores_to_spare_is_pinned_to_its_own(digits_run):
    """1 worker x 1 thread: its compute threads get the highest core (ganray.affinity), so Ray's
    processes keep to the others; where the cores are all needed or capped by a CPU quota, none."""
    from ganray import affinity

    cores = json.loads((digits_run / "summary.json").read_text())["worker_cores"]
    allowed = affinity.pinnable_cores() or []
    pinnable = len(allowed) >= 2
    assert cores == ([[allowed[-1]]] if pinnable else [None])
    if pinnable:  # the claim went with the run
        pid = json.loads((digits_run / "workers.json").read_text())["pid"]
        assert pid not in [c["pid"] for c in json.loads(affinity.claims_path().read_text())]


def test_cached_data_starts_no_ray_data_actors(digits_run):
    """Cached data goes to the workers as fixed splits: no Ray Data split coordinator and no
    dataset manager beside them (ganray.trainer), while Ray Train's own actors are there."""
    assert "TrainController" in _RUN_ACTORS and _RUN_ACTORS.count("RayTrainWorker") == 1
    assert not [a for a in _RUN_ACTORS if "Dataset" in a or "SplitCoordinator" in a], _RUN_ACTORS


def test_a_run_starts_only_ray_trains_actors(digits_run):
    """The progress line reads metrics.csv: no queue actor (or any other) of ganray's own. On
    this shared instance Ray Train also starts its preemption watcher and, for its controller's
    resource requests, Ray's autoscaling coordinator."""
    ray_train = {"TrainController", "RayTrainWorker", "SynchronizationActor", "PlacementGroupCleaner",
                 "PreemptionWatcher", "_AutoscalingCoordinatorActor"}
    assert set(_RUN_ACTORS) <= ray_train, _RUN_ACTORS


def test_sample_png_and_npz(digits_run, tmp_path):
    assert main(["sample", "--checkpoint", str(digits_run), "--n", "10", "--out", str(tmp_path / "s.npz")]) == 0
    images = np.load(tmp_path / "s.npz")["images"]
    assert images.shape == (10, 16, 16, 1) and images.dtype == np.uint8
    assert main(["sample", "--checkpoint", str(digits_run), "--n", "9", "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").stat().st_size > 100


def test_resumed_run_matches_uninterrupted(ray_session, tmp_path):
    """4 steps, stop, --resume to 8 steps == 8 steps straight (2 workers, same seed): each rank
    reads the same fixed split of the cached data, from the same batch on."""
    common = [*TINY, "--data", "digits", "--out", str(tmp_path), "--workers", "2",
              "--set", "train.checkpoint_every_kimg=0.064"]
    assert main(["train", *common, "--name", "straight", "--steps", "8"]) == 0
    assert main(["train", *common, "--name", "resumed", "--steps", "4"]) == 0
    assert main(["train", *common, "--name", "resumed", "--steps", "8", "--resume"]) == 0
    a = load_state(list_checkpoints(tmp_path / "straight")[-1])
    b = load_state(list_checkpoints(tmp_path / "resumed")[-1])
    assert a["step"] == b["step"] == 8
    for net in ("G", "D", "G_ema"):
        for k in a[net]:
            torch.testing.assert_close(a[net][k], b[net][k], rtol=0, atol=1e-6, msg=f"{net}.{k}")
    steps = [int(r["step"]) for r in _rows(tmp_path / "resumed")]
    assert steps == sorted(set(steps)) and steps[-1] == 8


def test_existing_run_needs_resume(digits_run, capsys):
    rc = main(["train", *TINY, "--data", "digits", "--out", str(digits_run.parent), "--name", "d1"])
    assert rc != 0
    assert "--resume" in capsys.readouterr().err


def test_conditional_with_stabilisers_trains_and_samples_a_class(ray_session, tmp_path):
    """Conditional G/D + hinge + spectral norm + lazy R1 + DiffAugment/ADA + cosine LR, end to end."""
    sets = ["model.conditional=true", "loss.kind=hinge", "model.spectral_norm=true", "model.d_norm=none",
            "loss.r1_gamma=1.0", "loss.r1_every=2", "augment.policy=translation,cutout", "augment.ada=true",
            "optim.lr_schedule=cosine", "optim.d_steps=2"]
    args = ["train", *TINY, "--data", "digits", "--out", str(tmp_path), "--name", "c", "--steps", "4"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    rows = _rows(tmp_path / "c")
    assert {"ada_p", "r_t", "grad_norm_g", "grad_norm_d"} <= set(rows[-1])
    assert float(rows[-1]["lr_g"]) < 2e-4  # cosine decay has started
    out = tmp_path / "three.npz"
    assert main(["sample", "--checkpoint", str(tmp_path / "c"), "--n", "6", "--label", "3", "--out", str(out)]) == 0
    data = np.load(out)
    assert data["images"].shape == (6, 16, 16, 1) and (data["labels"] == 3).all()
    assert main(["sample", "--checkpoint", str(tmp_path / "c"), "--label", "11", "--out", str(tmp_path / "x.npz")]) == 2


def test_conditional_auto_follows_the_labels(ray_session, tmp_path):
    """model.conditional=auto (the mnist preset) is resolved before training: on with labels, off without."""
    from ganray.config import load_config
    from ganray.launch import prepare

    unlabelled = tmp_path / "x.npz"
    np.savez(unlabelled, x=np.random.default_rng(0).integers(0, 255, (40, 16, 16), dtype=np.uint8))
    for source, expected in (("digits", True), (str(unlabelled), False)):
        cfg = load_config(None, [f"data.source={source}", f"run.out={tmp_path}", f"run.name=auto{expected}",
                                 "eval.features=none", "model.conditional=auto"], preset="debug")
        p = prepare(cfg)
        assert p.cfg.model.conditional is expected
        assert p.loop_config["config"]["model"]["conditional"] is expected


def test_max_minutes_stops_cleanly_and_drives_the_lr_schedule(ray_session, tmp_path):
    """--max-minutes ends the run with a final checkpoint and summary; a linear schedule decays with
    time. 2 workers reporting every step: reports must not throttle training."""
    args = ["train", *TINY, "--data", "digits", "--out", str(tmp_path), "--name", "mm", "--steps", "1000000",
            "--max-minutes", "0.1", "--workers", "2", "--set", "optim.lr_schedule=linear",
            "--set", "train.report_every_kimg=0.032", "--set", "train.checkpoint_every_kimg=1000"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "mm" / "summary.json").read_text())
    assert summary["stop_reason"] == "max_minutes" and summary["status"] == "stopped"
    rows = _rows(tmp_path / "mm")
    # Ray Train takes one report per worker every 2 s (its health-check poll) and blocks the next:
    # forwarding every row would allow ~3 in these 6 s. Rows go to metrics.csv at every step; the
    # workers forward only every 2 s, with the same decision on both ranks (or the run would hang).
    assert len(rows) >= 10, f"{len(rows)} rows in 6 s: reports are throttling the training loop"
    step = int(rows[-1]["step"])
    assert 0 < step < 1000000
    assert list_checkpoints(tmp_path / "mm")[-1].name.endswith(f"{step:08d}")
    lrs = [float(r["lr_g"]) for r in rows]
    # the lr a step used is set from the time used at the report before it: it falls towards 0
    assert lrs[-1] < 0.5 * lrs[0] <= 2e-4


def test_keep_checkpoints_keeps_the_best_by_fid(ray_session, tmp_path, mnist_dir, mnist_classifier16):
    """Checkpoints written between evaluations must not evict the evaluated ones (Ray ranks a
    result without the score attribute as the best): every kept checkpoint has an FID, the best among them."""
    args = ["train", "--preset", "debug", "--quiet", "--data", str(mnist_dir), "--out", str(tmp_path), "--name", "k",
            "--steps", "12"]
    for s in ("eval.features=classifier", f"eval.classifier_path={mnist_classifier16}", "eval.fid_samples=256",
              "eval.every_kimg=0.064", "train.report_every_kimg=0.016", "train.checkpoint_every_kimg=0.016",
              "train.keep_checkpoints=2"):
        args += ["--set", s]
    assert main(args) == 0
    fid = {int(r["step"]): float(r["fid"]) for r in _rows(tmp_path / "k") if r.get("fid")}
    assert sorted(fid) == [4, 8, 12]
    kept = [int(p.name[-8:]) for p in list_checkpoints(tmp_path / "k")]
    assert 12 in kept and len(kept) <= 3, kept
    assert set(kept) <= set(fid), f"kept un-evaluated checkpoints {sorted(set(kept) - set(fid))}"
    assert min(fid, key=fid.get) in kept
