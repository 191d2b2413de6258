"""Reading run folders and Tune experiment folders, and the `ganray runs` table.

Read-only and light (no torch, no Ray): the folders may be local paths or URIs, read through
pyarrow's filesystem layer like the writer (runfolder.py) uses.  The folder format is the
team brief's: config.yaml, metrics.csv, samples/grid_<step:08d>.png, summary.json.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs
import yaml

# A run without summary.json whose metrics.csv changed this recently is taken to be running.
RUNNING_WINDOW_S = 15 * 60
_GRID_RE = re.compile(r"^grid_(\d+)\.png$")


class RunReadError(ValueError):
    """A folder is missing, unreadable, or not a run/experiment folder; the message names it."""


class Store:
    """One folder on a local disk or behind a URI; paths below it are relative ('a/b.png')."""

    def __init__(self, path: str):
        self.path = str(path).rstrip("/") or "/"
        try:
            if "://" in self.path:
                self.fs, self.root = pafs.FileSystem.from_uri(self.path)
            else:
                self.fs, self.root = pafs.LocalFileSystem(), self.path
        except (ValueError, OSError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise RunReadError(f"cannot open {self.path!r}: {e}") from None

    def child(self, name: str) -> "Store":
        return Store(f"{self.path}/{name}")

    def _info(self, rel: str = "") -> pafs.FileInfo:
        return self.fs.get_file_info(f"{self.root}/{rel}".rstrip("/"))

    def is_dir(self, rel: str = "") -> bool:
        return self._info(rel).type == pafs.FileType.Directory

    def exists(self, rel: str) -> bool:
        return self._info(rel).type == pafs.FileType.File

    def mtime(self, rel: str) -> float | None:
        m = self._info(rel).mtime
        return m.timestamp() if m is not None else None

    def read_bytes(self, rel: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(f"{self.root}/{rel}") as f:
                return f.read()
        except (FileNotFoundError, OSError):
            return None

    def read_text(self, rel: str) -> str | None:
        data = self.read_bytes(rel)
        return None if data is None else data.decode("utf-8", errors="replace")

    def list(self, rel: str = "") -> list[tuple[str, bool]]:
        """(name, is_dir) of the entries directly below rel, sorted by name."""
        selector = pafs.FileSelector(f"{self.root}/{rel}".rstrip("/"), allow_not_found=True)
        infos = self.fs.get_file_info(selector)
        return sorted((i.base_name, i.type == pafs.FileType.Directory) for i in infos)


def read_metrics_csv(text: str, where: str = "metrics.csv") -> dict[str, list[float]]:
    """Columns of metrics.csv as float lists (NaN for empty or non-numeric cells)."""
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        return {}
    if "step" not in reader.fieldnames:
        raise RunReadError(f"{where}: no 'step' column (header is {reader.fieldnames})")
    columns: dict[str, list[float]] = {name: [] for name in reader.fieldnames}
    for row in reader:
        for name in columns:
            columns[name].append(_to_float(row.get(name)))
    return columns


def _to_float(cell: str | None) -> float:
    try:
        return float(cell) if cell not in (None, "") else math.nan
    except ValueError:
        return math.nan


@dataclass
class RunRecord:
    """What a run folder holds, read once; missing files leave their fields empty."""

    path: str
    name: str
    config: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    metrics: dict[str, list[float]] = field(default_factory=dict)
    grids: list[int] = field(default_factory=list)  # steps with samples/grid_<step>.png
    metrics_mtime: float | None = None
    # A Tune trial's row of the experiment's results.csv (stop reason from the stopper/scheduler).
    results: dict[str, str] | None = None

    def last(self, column: str) -> float | None:
        for v in reversed(self.metrics.get(column, [])):
            if math.isfinite(v):
                return v
        return None

    def _summary(self, key: str) -> Any:
        return (self.summary or {}).get(key)

    @property
    def status(self) -> str:
        if self._summary("status"):
            return str(self._summary("status"))
        if self.results is not None:
            reason = self.stop_reason or "completed"
            return {"error": "failed", "completed": "finished"}.get(reason, "stopped")
        recent = self.metrics_mtime is not None and time.time() - self.metrics_mtime < RUNNING_WINDOW_S
        return "running" if recent else "incomplete"

    @property
    def stop_reason(self) -> str | None:
        return self._summary("stop_reason") or (self.results or {}).get("stop_reason") or None

    @property
    def data(self) -> str | None:
        return self._summary("data") or ((self.config or {}).get("data") or {}).get("source")

    @property
    def kimg(self) -> float | None:
        value = self._summary("kimg")
        return float(value) if value is not None else self.last("kimg")

    @property
    def steps(self) -> int | None:
        value = self._summary("steps")
        if value is None:
            value = self.last("step")
        return int(value) if value is not None else None

    @property
    def wall_s(self) -> float | None:
        value = self._summary("wall_s")
        return float(value) if value is not None else self.last("wall_s")

    @property
    def img_per_s(self) -> float | None:
        value = self._summary("img_per_s")
        return float(value) if value is not None else self.last("img_per_s")

    def best_fid(self) -> tuple[float, float | None, int | None] | None:
        """(best FID, kimg, step) from metrics.csv; summary.json's value when the csv has none."""
        fids = self.metrics.get("fid", [])
        finite = [(v, i) for i, v in enumerate(fids) if math.isfinite(v)]
        if finite:
            value, i = min(finite)
            kimg = self.metrics.get("kimg", [math.nan] * len(fids))[i]
            return value, kimg, int(self.metrics["step"][i])
        if self._summary("best_fid") is not None:
            return float(self._summary("best_fid")), None, None
        return None

    def grid_near(self, step: int | None) -> int | None:
        """The sample grid written at `step`, or the last one before it."""
        if not self.grids:
            return None
        if step is None:
            return self.grids[-1]
        before = [s for s in self.grids if s <= step]
        return before[-1] if before else self.grids[0]


def is_run(store: Store) -> bool:
    # An experiment folder has a summary.json too; its results.csv tells it apart.
    if store.exists("results.csv"):
        return False
    return any(store.exists(f) for f in ("metrics.csv", "summary.json", "config.yaml"))


def trial_folders(store: Store) -> list[Store]:
    """Trial run folders of an experiment: <exp>/runs/<trial_id>/ (ganray tune) or <exp>/<trial>/."""
    found = []
    for parent in ([store.child("runs")] if store.is_dir("runs") else []) + [store]:
        found += [parent.child(n) for n, is_dir in parent.list() if is_dir and is_run(parent.child(n))]
    return found


def is_experiment(store: Store) -> bool:
    """A Tune experiment folder: ganray's results.csv (written at the end), or Tune's own
    tuner.pkl / experiment_state-*.json (there while the trials run)."""
    if store.exists("results.csv") or store.exists("tuner.pkl"):
        return True
    return any(n.startswith("experiment_state") and not is_dir for n, is_dir in store.list())


def read_run(path: str, name: str | None = None) -> RunRecord:
    store = Store(path)
    if not store.is_dir():
        raise RunReadError(f"{path!r} is not a folder")
    if not is_run(store):
        raise RunReadError(f"{path!r} is not a run folder: no metrics.csv, summary.json or config.yaml")
    record = RunRecord(path=store.path, name=name or store.path.rsplit("/", 1)[-1])
    record.config = _load(store, "config.yaml", yaml.safe_load, yaml.YAMLError)
    record.summary = _load(store, "summary.json", json.loads, json.JSONDecodeError)
    text = store.read_text("metrics.csv")
    if text is not None:
        record.metrics = read_metrics_csv(text, f"{store.path}/metrics.csv")
        record.metrics_mtime = store.mtime("metrics.csv")
    record.grids = sorted(int(m.group(1)) for n, _ in store.list("samples") if (m := _GRID_RE.match(n)))
    return record


def _load(store: Store, rel: str, parse, error) -> dict[str, Any] | None:
    text = store.read_text(rel)
    if text is None:
        return None
    try:
        value = parse(text)
    except error as e:
        raise RunReadError(f"{store.path}/{rel} cannot be parsed: {e}") from None
    if not isinstance(value, dict):
        raise RunReadError(f"{store.path}/{rel}: expected a mapping, got {type(value).__name__}")
    return value


def read_trials(path: str) -> list[RunRecord]:
    """The trials of a Tune experiment folder, named by their folder, with their results.csv row."""
    store = Store(path)
    results = {}
    text = store.read_text("results.csv")
    if text:
        for row in csv.DictReader(io.StringIO(text)):
            key = row.get("trial_id") or (row.get("run_dir") or "").rstrip("/").rsplit("/", 1)[-1]
            results[key] = row
    trials = []
    for folder in trial_folders(store):
        record = read_run(folder.path)
        record.results = results.get(record.name)
        trials.append(record)
    return trials


def find_runs(out_dir: str) -> list[RunRecord]:
    """Run folders directly below out_dir; trials of experiment folders as 'experiment/trial'."""
    store = Store(out_dir)
    if not store.is_dir():
        raise RunReadError(f"{out_dir!r} is not a folder")
    records = []
    for name, is_dir in store.list():
        child = store.child(name)
        if not is_dir:
            continue
        if is_experiment(child):
            records += [_renamed(t, f"{name}/{t.name}") for t in read_trials(child.path)]
        elif is_run(child):
            records.append(read_run(child.path))
    return records


def _renamed(record: RunRecord, name: str) -> RunRecord:
    record.name = name
    return record


# --- formatting ---


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_kimg(kimg: float | None) -> str:
    """Three significant digits for short runs (0.128), one decimal from 100 kimg on."""
    if kimg is None or not math.isfinite(kimg):
        return "-"
    return f"{kimg:.1f}" if kimg >= 100 else f"{kimg:.3g}"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def table_rows(records: list[RunRecord]) -> list[list[str]]:
    rows = [["NAME", "DATA", "KIMG", "BEST FID", "WALL", "STATUS"]]
    for r in records:
        best = r.best_fid()
        status = r.status + (f" ({r.stop_reason})" if r.stop_reason not in (None, "", "completed") else "")
        rows.append([r.name, str(r.data or "-"), format_kimg(r.kimg),
                     _fmt(best[0] if best else None, ".2f"), format_duration(r.wall_s), status])
    return rows


def format_table(records: list[RunRecord]) -> str:
    rows = table_rows(records)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    numeric = {2, 3, 4}  # right-align numbers so their digits line up
    lines = []
    for row in rows:
        cells = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def sort_records(records: list[RunRecord], key: str) -> list[RunRecord]:
    if key == "fid":
        return sorted(records, key=lambda r: (r.best_fid() is None, (r.best_fid() or (0,))[0], r.name))
    if key == "recent":
        return sorted(records, key=lambda r: (r.metrics_mtime or 0.0, r.name))
    return sorted(records, key=lambda r: r.name)


# --- `ganray runs` ---


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("runs", help="table of the runs under an output folder",
                              description="List run folders (and Tune trials) under OUT_DIR.")
    p.add_argument("out_dir", nargs="?", default="runs", metavar="OUT_DIR",
                   help="storage root, local path or URI (default: runs)")
    p.add_argument("--sort", choices=["name", "fid", "recent"], default="name",
                   help="order of the rows (default: name)")
    p.set_defaults(func=_runs_command)
    return p


def _runs_command(args: argparse.Namespace) -> int:
    try:
        records = find_runs(args.out_dir)
    except RunReadError as e:
        print(f"ganray: error: {e}", file=sys.stderr)
        return 2
    if not records:
        print(f"no runs under {args.out_dir}")
        return 0
    print(format_table(sort_records(records, args.sort)))
    return 0
