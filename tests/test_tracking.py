"""Tracker: TensorBoard events read back with TensorBoard's own reader; MLflow via its client."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ganray.config import debug
from ganray.tracking import TAG_GROUPS, Tracker, check_backends, scalar_tag

ALL_COLUMNS = [
    "kimg", "loss_d", "loss_g", "d_real", "d_fake", "img_per_s", "data_wait_frac", "wall_s",
    "fid", "kid", "kid_std", "is", "precision", "recall", "eval_s", "grad_norm_g",
    "grad_norm_d", "r_t", "ada_p", "lr_g", "lr_d", "nan_skips", "rollbacks", "mode_entropy",
]


def _events(tb_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _row(step: int, **extra) -> dict[str, float]:
    return {"kimg": step * 0.016, "loss_d": 1.0 + step, "loss_g": 2.0 - 0.1 * step,
            "d_real": 0.5 + 0.01 * step, "d_fake": -0.5, "img_per_s": 1000.0 + step,
            "data_wait_frac": 0.05, "wall_s": 1.5 * step, **extra}


def _grid(seed: int, h: int = 34, w: int = 66, c: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


@pytest.fixture
def cfg():
    c = debug()
    c.run.name = "trk"
    return c


def _with_track(cfg, **track):
    """The current Config has no `track` section yet; the Tracker reads it with getattr."""
    return SimpleNamespace(track=SimpleNamespace(**track), run=cfg.run,
                           to_dict=cfg.to_dict, to_yaml=cfg.to_yaml)


def test_scalars_images_and_config_in_event_files(tmp_path, cfg):
    run = tmp_path / "trk"
    with Tracker(str(run), cfg) as tracker:
        for step in (16, 32, 48):
            fid = 80.0 - step if step == 48 else None  # FID only on eval reports
            tracker.log(step, _row(step, fid=fid), grid=_grid(step))
    acc = _events(run / "tb")
    tags = acc.Tags()
    assert acc.Scalars("loss/loss_d")[-1].value == pytest.approx(49.0)
    assert [e.step for e in acc.Scalars("D/d_real")] == [16, 32, 48]
    assert [(e.step, e.value) for e in acc.Scalars("eval/fid")] == [(48, 32.0)]
    assert {"perf/img_per_s", "perf/data_wait_frac", "progress/kimg"} <= set(tags["scalars"])
    images = acc.Images("samples")
    assert [(i.step, i.width, i.height) for i in images] == [(16, 66, 34), (32, 66, 34), (48, 66, 34)]
    assert images[0].encoded_image_string[:4] == b"\x89PNG"
    assert "config/text_summary" in tags["tensors"]


def test_every_metrics_csv_column_becomes_a_scalar(tmp_path, cfg):
    row = {name: float(i) for i, name in enumerate(ALL_COLUMNS)}
    row["custom_thing"] = np.float32(3.5)  # unknown columns still land somewhere visible
    with Tracker(str(tmp_path / "r"), cfg) as tracker:
        tracker.log(1, row, grid=_grid(0, c=3))
    scalars = set(_events(tmp_path / "r" / "tb").Tags()["scalars"])
    assert scalars == {scalar_tag(n) for n in row}
    assert "other/custom_thing" in scalars
    assert set(TAG_GROUPS) >= set(ALL_COLUMNS)


def test_resume_hides_events_past_the_checkpoint(tmp_path, cfg):
    run = tmp_path / "r"
    with Tracker(str(run), cfg) as tracker:
        for step in range(1, 6):
            tracker.log(step, {"loss_d": float(step)})
    # Crash after step 5, restart from the checkpoint at step 3: steps 4-5 are redone.
    with Tracker(str(run), cfg, resume_step=3) as tracker:
        for step in (4, 5, 6):
            tracker.log(step, {"loss_d": 100.0 + step})
    events = _events(run / "tb").Scalars("loss/loss_d")
    assert [(e.step, e.value) for e in events] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 104.0), (5, 105.0), (6, 106.0)]


def test_uri_run_dir_syncs_events(tmp_path, cfg):
    uri = (tmp_path / "remote" / "r").as_uri()  # file:// goes through pyarrow like s3:// does
    with Tracker(uri, cfg) as tracker:
        tracker.log(1, {"loss_g": 0.25}, grid=_grid(1))
    with Tracker(uri, cfg, resume_step=1) as tracker:
        tracker.log(2, {"loss_g": 0.5})
    acc = _events(tmp_path / "remote" / "r" / "tb")
    assert [(e.step, e.value) for e in acc.Scalars("loss/loss_g")] == [(1, 0.25), (2, 0.5)]
    assert len(acc.Images("samples")) == 1


def test_failed_upload_warns_and_keeps_the_local_events(tmp_path, cfg, caplog):
    remote = tmp_path / "remote" / "r"
    remote.mkdir(parents=True)
    (remote / "tb").write_text("a file where the folder should be")
    with Tracker(remote.as_uri(), cfg) as tracker:
        tracker.log(1, {"loss_g": 0.25})
        local = tracker._tb_local
    assert any("copying TensorBoard events" in r.getMessage() for r in caplog.records)
    assert [e.value for e in _events(Path(local)).Scalars("loss/loss_g")] == [0.25]
    shutil.rmtree(local)


def test_bad_inputs_name_the_culprit(tmp_path, cfg, caplog):
    with Tracker(str(tmp_path / "r"), cfg, resume_step=0) as tracker:
        tracker.log(1, {"loss_d": 1.0, "features": "classifier"})
        tracker.log(2, {"loss_d": 2.0, "features": "classifier"})
        with pytest.raises(TypeError, match="uint8"):
            tracker.log(1, {"loss_d": 1.0}, grid=np.zeros((8, 8, 3), np.float32))
        with pytest.raises(ValueError, match="H x W x C"):
            tracker.log(1, {"loss_d": 1.0}, grid=np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(RuntimeError, match="after close"):
        tracker.log(2, {"loss_d": 1.0})
    # A non-numeric entry is skipped with one warning naming it; the numbers still arrive.
    warnings = [r.getMessage() for r in caplog.records if "features" in r.getMessage()]
    assert len(warnings) == 1 and "'features'" in warnings[0]
    acc = _events(tmp_path / "r" / "tb")
    assert [e.value for e in acc.Scalars("loss/loss_d")] == [1.0, 2.0]
    assert "config/text_summary" in acc.Tags()["tensors"], "step 0 is a fresh start"


def test_tensorboard_off_writes_nothing(tmp_path, cfg):
    with Tracker(str(tmp_path / "r"), _with_track(cfg, tensorboard=False)) as tracker:
        tracker.log(1, {"loss_d": 1.0})
    assert not (tmp_path / "r" / "tb").exists()


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_missing_backend_is_reported_before_training(cfg):
    with pytest.raises(RuntimeError, match=r"track\.wandb.*ganray\[wandb\]"):
        check_backends(_with_track(cfg, wandb=True))
    check_backends(cfg)  # defaults: TensorBoard only


def test_mlflow_metrics_images_and_resume(tmp_path, cfg, monkeypatch):
    pytest.importorskip("mlflow", reason="mlflow not installed (pip install mlflow-skinny)")
    from mlflow.tracking import MlflowClient

    # MLflow 3 refuses the file store unless asked; it is the only store without a server or
    # SQLAlchemy, and the one the tests use.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    tcfg = _with_track(cfg, tensorboard=False, mlflow=True, mlflow_tracking_uri=uri,
                       mlflow_experiment="ganray-test")
    run = str(tmp_path / "trk")
    with Tracker(run, tcfg) as tracker:
        tracker.log(10, _row(10, fid=42.0), grid=_grid(0, c=3))
        tracker.log(20, _row(20))
    with Tracker(run, tcfg, resume_step=20) as tracker:
        tracker.log(30, _row(30, fid=21.0))

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("ganray-test")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, "the resumed attempt must continue the same MLflow run"
    run_id = runs[0].info.run_id
    assert runs[0].info.run_name == "trk"
    assert runs[0].data.params["optim/lr_g"] == str(cfg.optim.lr_g)
    history = client.get_metric_history(run_id, "fid")
    assert [(m.step, m.value) for m in history] == [(10, 42.0), (30, 21.0)]
    assert [m.step for m in client.get_metric_history(run_id, "loss_d")] == [10, 20, 30]
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    assert any("samples" in p and p.endswith(".png") for p in images)


def test_tensorboard_logdir_out_shows_runs_and_trials_side_by_side(tmp_path, cfg):
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

    out = tmp_path / "runs"
    for run_dir in (out / "solo", out / "search" / "trial_0", out / "search" / "trial_1"):
        with Tracker(str(run_dir), cfg) as tracker:
            tracker.log(1, {"loss_d": 1.0})
    mux = EventMultiplexer().AddRunsFromDirectory(str(out))  # what `tensorboard --logdir runs` does
    mux.Reload()
    assert set(mux.Runs()) == {"solo/tb", "search/trial_0/tb", "search/trial_1/tb"}
