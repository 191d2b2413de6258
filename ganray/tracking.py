"""Experiment tracking for rank 0: TensorBoard always, MLflow and W&B when enabled.

The training loop calls ``Tracker.log`` once per report with the same numbers it writes to
metrics.csv plus the fixed-noise sample grid.  Event files go to ``<run folder>/tb/`` so that
``tensorboard --logdir <run.out>`` shows train runs and Tune trials (whose trial folders are
run folders too) side by side.  MLflow and W&B go through Ray's own integrations
(``setup_mlflow``, ``setup_wandb``), which know Train ranks and Tune trial names.

The switches live in the config's ``track`` section (ganray.config.TrackConfig).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from numbers import Real
from typing import Any

import numpy as np

from ganray.config import TrackConfig

logger = logging.getLogger(__name__)

# metrics.csv column -> TensorBoard group; the tag is "<group>/<column>" so that every chart
# keeps the column name people grep for.  Unknown numeric columns land in "other/".
TAG_GROUPS: dict[str, str] = {
    "loss_d": "loss", "loss_g": "loss",
    "d_real": "D", "d_fake": "D",
    "fid": "eval", "kid": "eval", "kid_std": "eval", "is": "eval", "precision": "eval",
    "recall": "eval", "mode_entropy": "eval",
    "img_per_s": "perf", "data_wait_frac": "perf", "wall_s": "perf", "eval_s": "perf",
    "grad_norm_g": "grad_norm", "grad_norm_d": "grad_norm",
    "lr_g": "lr", "lr_d": "lr",
    "r_t": "augment", "ada_p": "augment",
    "nan_skips": "health", "rollbacks": "health",
    "kimg": "progress",
}
# Pairs that mean something only next to each other (one chart each in TensorBoard's
# Custom Scalars tab).
_MULTILINE = {
    "losses": ["loss/loss_d", "loss/loss_g"],
    "D(real) vs D(fake)": ["D/d_real", "D/d_fake"],
    "gradient norms": ["grad_norm/grad_norm_g", "grad_norm/grad_norm_d"],
    "learning rates": ["lr/lr_g", "lr/lr_d"],
}
SYNC_EVERY_S = 60.0


def _settings(cfg: Any) -> TrackConfig:
    """The config's `track` section (its defaults for configs built without one, e.g. in tests)."""
    section = getattr(cfg, "track", None)
    if section is None or isinstance(section, TrackConfig):
        return section or TrackConfig()
    return TrackConfig(**{k: getattr(section, k) for k in TrackConfig.model_fields if hasattr(section, k)})


def check_backends(cfg: Any) -> None:
    """Fail before training starts when an enabled tracker's package is missing."""
    s = _settings(cfg)
    for enabled, module, extra in ((s.mlflow, "mlflow", "mlflow"), (s.wandb, "wandb", "wandb")):
        if not enabled:
            continue
        try:
            __import__(module)
        except ImportError:
            raise RuntimeError(
                f"track.{module} is true but the {module!r} package is not installed; "
                f"install it with: pip install 'ganray[{extra}]'"
            ) from None


def scalar_tag(name: str) -> str:
    return f"{TAG_GROUPS.get(name, 'other')}/{name}"


def numeric_items(metrics: dict[str, Any]) -> tuple[dict[str, float], list[str]]:
    """Split a metrics row into its numbers and the keys that are not numbers.

    None (a column not measured this report) is dropped silently.  NaN and inf are kept: a
    diverging loss is exactly what the charts must show.
    """
    out, skipped = {}, []
    for key, value in metrics.items():
        if value is None or key == "step":
            continue
        if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
            value = value.item()  # numpy / torch 0-d scalars
        if isinstance(value, bool) or not isinstance(value, Real):
            skipped.append(key)
            continue
        out[key] = float(value)
    return out, skipped


def check_grid(grid: np.ndarray) -> np.ndarray:
    """uint8 H x W x C (C in 1, 3, 4) or H x W; returned as H x W x C."""
    if not isinstance(grid, np.ndarray) or grid.dtype != np.uint8:
        raise TypeError(f"grid must be a uint8 numpy array, got {getattr(grid, 'dtype', type(grid))}")
    if grid.ndim == 2:
        grid = grid[:, :, None]
    if grid.ndim != 3 or grid.shape[2] not in (1, 3, 4):
        raise ValueError(f"grid must be H x W x C with C in 1, 3, 4; got shape {grid.shape}")
    return grid


def _is_uri(path: str) -> bool:
    return "://" in str(path)


def _wandb_run_id(run_dir: str) -> str:
    # Deterministic, so that a resumed run (same folder) continues the same W&B run.
    return hashlib.sha1(str(run_dir).rstrip("/").encode()).hexdigest()[:16]


class Tracker:
    """Rank-0 tracker: ``log(step, metrics, grid)`` once per report, ``close()`` at the end."""

    def __init__(self, run_dir: str, cfg: Any, *, resume_step: int | None = None):
        self.run_dir = str(run_dir).rstrip("/")
        self.cfg = cfg
        self.settings = _settings(cfg)
        self.resume_step = resume_step
        self.run_name = getattr(getattr(cfg, "run", None), "name", None) or os.path.basename(
            self.run_dir
        )
        self._tb = None
        self._tb_local: str | None = None  # local event dir when run_dir is a URI
        self._last_sync = time.monotonic()
        self._mlflow = None
        self._wandb = None
        self._closed = False
        self._warned: set[str] = set()
        if self.settings.tensorboard:
            self._open_tensorboard()
        if self.settings.mlflow:
            self._open_mlflow()
        if self.settings.wandb:
            self._open_wandb()

    # --- TensorBoard ---

    @property
    def tb_dir(self) -> str:
        return f"{self.run_dir}/tb"

    def _open_tensorboard(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if _is_uri(self.run_dir):
            # Event files are appended to; object stores cannot append.  Write locally and
            # copy the folder to <run_dir>/tb every SYNC_EVERY_S and at close.
            # A resumed attempt's new event file joins the earlier ones already at the URI.
            self._tb_local = tempfile.mkdtemp(prefix="ganray-tb-")
        log_dir = self._tb_local or self.tb_dir
        # purge_step: after a restart from the checkpoint at resume_step, TensorBoard hides the
        # events the crashed attempt wrote past that step instead of drawing them twice.
        purge = None if self.resume_step is None else self.resume_step + 1
        self._tb = SummaryWriter(log_dir=log_dir, purge_step=purge, flush_secs=30)
        if not self.resume_step:  # a fresh start (the loop passes step 0 then)
            self._tb.add_text("config", _config_markdown(self.cfg), 0)
            layout = {"ganray": {title: ["Multiline", tags] for title, tags in _MULTILINE.items()}}
            self._tb.add_custom_scalars(layout)

    def _sync(self, force: bool = False) -> bool:
        """Copy the local event files to <run_dir>/tb; False (and a warning) if that failed."""
        if self._tb_local is None or not (force or time.monotonic() - self._last_sync > SYNC_EVERY_S):
            return True
        import pyarrow.fs as pafs

        self._last_sync = time.monotonic()
        try:
            fs, path = pafs.FileSystem.from_uri(self.tb_dir)
            fs.create_dir(path, recursive=True)
            pafs.copy_files(self._tb_local, path, destination_filesystem=fs)
        except OSError as e:  # storage hiccup: events stay local, the next sync retries
            logger.warning("copying TensorBoard events to %s failed (%s); local copy in %s",
                           self.tb_dir, e, self._tb_local)
            return False
        return True

    # --- MLflow and W&B through Ray's integrations ---

    def _open_mlflow(self) -> None:
        from ray.air.integrations.mlflow import setup_mlflow

        s = self.settings
        resumed = self._find_mlflow_run() if self.resume_step else None
        previous = os.environ.get("MLFLOW_RUN_ID")
        if resumed:
            os.environ["MLFLOW_RUN_ID"] = resumed  # start_run then continues that run
        try:
            self._mlflow = setup_mlflow(
                _config_dict(self.cfg),
                tracking_uri=s.mlflow_tracking_uri,
                experiment_name=s.mlflow_experiment,
                run_name=self.run_name,
                create_experiment_if_not_exists=True,
                tags={"ganray.run_dir": self.run_dir},
            )
        finally:
            if resumed:
                _restore_env("MLFLOW_RUN_ID", previous)

    def _find_mlflow_run(self) -> str | None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.settings.mlflow_tracking_uri)
        experiment = client.get_experiment_by_name(self.settings.mlflow_experiment)
        if experiment is None:
            return None
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`ganray.run_dir` = '{self.run_dir}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def _open_wandb(self) -> None:
        from ray.air.integrations.wandb import setup_wandb

        s = self.settings
        self._wandb = setup_wandb(
            _config_dict(self.cfg),
            trial_id=_wandb_run_id(self.run_dir),
            trial_name=self.run_name,
            project=s.wandb_project,
            entity=s.wandb_entity,
            resume="allow",
            dir=None if _is_uri(self.run_dir) else self.run_dir,
        )

    # --- the API the training loop uses ---

    def log(self, step: int, metrics: dict[str, float], grid: np.ndarray | None = None) -> None:
        if self._closed:
            raise RuntimeError("Tracker.log called after close()")
        values, skipped = numeric_items(metrics)
        for key in set(skipped) - self._warned:
            # A stray string must not end a run hours in; say so once per key instead.
            logger.warning("Tracker.log: metrics[%r] is %s, not a number; not tracked",
                           key, type(metrics[key]).__name__)
            self._warned.add(key)
        if grid is not None:
            grid = check_grid(grid) if self.settings.log_images else None
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(scalar_tag(key), value, step)
            if grid is not None:
                self._tb.add_image("samples", grid, step, dataformats="HWC")
            if self._tb_local is not None:
                self._tb.flush()
                self._sync()
        # Extras must not end a long GAN run on a network hiccup: warn and carry on.
        if self._mlflow is not None:
            self._guard("mlflow", self._log_mlflow, step, values, grid)
        if self._wandb is not None:
            self._guard("wandb", self._log_wandb, step, values, grid)

    def _log_mlflow(self, step: int, values: dict[str, float], grid: np.ndarray | None) -> None:
        self._mlflow.log_metrics(values, step=step)
        if grid is not None:
            self._mlflow.log_image(grid, key="samples", step=step)

    def _log_wandb(self, step: int, values: dict[str, float], grid: np.ndarray | None) -> None:
        import wandb

        row: dict[str, Any] = {scalar_tag(k): v for k, v in values.items()}
        if grid is not None:
            row["samples"] = wandb.Image(grid)
        self._wandb.log(row, step=step)

    def _guard(self, name: str, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - any client error; logged, tracker dropped
            logger.warning("%s logging failed (%s: %s); %s tracking is off for this run",
                           name, type(e).__name__, e, name)
            setattr(self, f"_{name}", None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._mlflow is not None:
            self._guard("mlflow", lambda: self._mlflow.end_run())
        if self._wandb is not None:
            self._guard("wandb", lambda: self._wandb.finish())
        if self._tb is not None:
            self._tb.close()
            if self._sync(force=True) and self._tb_local is not None:
                shutil.rmtree(self._tb_local, ignore_errors=True)

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _config_dict(cfg: Any) -> dict[str, Any]:
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)


def _config_markdown(cfg: Any) -> str:
    # TensorBoard's Text tab renders markdown; indenting by four spaces keeps the YAML verbatim.
    text = cfg.to_yaml() if hasattr(cfg, "to_yaml") else str(cfg)
    return "\n".join("    " + line for line in text.splitlines())


def _restore_env(key: str, previous: str | None) -> None:
    if previous is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = previous
