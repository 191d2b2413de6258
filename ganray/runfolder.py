"""The run folder `<run.out>/<run.name>/`: config, metrics.csv, sample grids, summary.

Written by rank 0 only, through pyarrow's filesystem layer so `run.out` may be a local path
or a URI (s3://, gs://). Every file is rewritten whole (small files), via temp-then-rename on
local disks, so a killed run never leaves a torn file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs

_TAIL_BYTES = 16384  # more than the header or any one metrics row
BASE_COLUMNS = ["step", "kimg", "loss_d", "loss_g", "d_real", "d_fake", "img_per_s", "data_wait_frac", "wall_s"]


def storage_root(out: str) -> str:
    """Ray Train needs an absolute path or a URI."""
    if "://" in out:
        return out
    return str(Path(out).expanduser().resolve())


def run_path(out: str, name: str) -> str:
    return f"{storage_root(out).rstrip('/')}/{name}"


class RunFolder:
    def __init__(self, path: str):
        self.path = path.rstrip("/")
        self.fs, self.root = pafs.FileSystem.from_uri(self.path) if "://" in path else (pafs.LocalFileSystem(), self.path)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.fs.create_dir(self.root, recursive=True)
        self.rows: list[dict[str, Any]] = []

    # --- raw file access ---
    def write_bytes(self, rel: str, data: bytes) -> None:
        dest = f"{self.root}/{rel}"
        parent = dest.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        if self.local:
            tmp = f"{parent}/.{os.path.basename(dest)}.{os.getpid()}.tmp"
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, dest)
            except OSError as e:
                # A full or read-only disk: leave the previous file and no temp file; name the file.
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise OSError(e.errno, e.strerror or str(e), dest) from e
        else:
            with self.fs.open_output_stream(dest) as f:
                f.write(data)

    def read_bytes(self, rel: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(f"{self.root}/{rel}") as f:
                return f.read()
        except (FileNotFoundError, OSError):
            return None

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_text(rel, json.dumps(obj, indent=2, default=float) + "\n")

    # --- metrics.csv ---
    def load_metrics(self, upto_step: int | None) -> None:
        """On resume: keep the rows up to the restored step, so none repeat or go missing."""
        raw = self.read_bytes("metrics.csv")
        self.rows = []
        if raw:
            for row in csv.DictReader(io.StringIO(raw.decode())):
                if upto_step is None or int(float(row["step"])) <= upto_step:
                    self.rows.append({k: _num(v) for k, v in row.items() if v != ""})

    def append_metrics(self, row: dict[str, Any]) -> None:
        self.rows = [r for r in self.rows if r["step"] < row["step"]] + [row]
        columns = list(BASE_COLUMNS)
        for r in self.rows:
            columns += [k for k in r if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: _fmt(r.get(k)) for k in columns})
        self.write_text("metrics.csv", buf.getvalue())

    def newest_metrics(self) -> dict[str, Any] | None:
        """metrics.csv's last row, or None before the first. Reads the header and the file's
        last few KiB only: the driver polls this for its progress line while the file grows
        with the run, and rank 0 rewrites it whole (atomically on local disks), so one open
        handle sees one version."""
        try:
            with self.fs.open_input_file(f"{self.root}/metrics.csv") as f:
                size = f.size()
                head = f.read(min(size, _TAIL_BYTES))
                if size > _TAIL_BYTES:
                    f.seek(size - _TAIL_BYTES)
                    tail = f.read()
                else:
                    tail = head
        except OSError:
            return None
        lines = tail.rstrip(b"\n").split(b"\n")
        if len(lines) < 2:  # the header alone (a long file's tail window always holds 2 or more)
            return None
        # A progress line must never stop the driver: undecodable bytes become U+FFFD.
        names = next(csv.reader([head.split(b"\n", 1)[0].decode(errors="replace")]))
        values = next(csv.reader([lines[-1].decode(errors="replace")]))
        if len(values) != len(names):
            return None  # a header and a row of different versions (a remote store's ranged reads)
        return {k: _num(v) for k, v in zip(names, values) if v != ""}

    # --- images ---
    def write_png(self, rel: str, image: np.ndarray) -> None:
        self.write_bytes(rel, encode_png(image))

    def write_fid_plot(self) -> None:
        pts = [(r["kimg"], r["fid"]) for r in self.rows if r.get("fid") is not None]
        if pts:
            self.write_png("fid.png", plot_curve(pts))


def encode_png(image: np.ndarray, compress_level: int = 6) -> bytes:
    """PNG bytes of an H x W x C uint8 image (C = 1 or 3). compress_level 1 encodes a sample grid
    several times faster than PIL's default 6, for files a little larger."""
    from PIL import Image

    buf = io.BytesIO()
    img = image[..., 0] if image.shape[-1] == 1 else image
    Image.fromarray(img).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def _num(v: str):
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


_COLOURS = [(200, 40, 40), (40, 90, 200), (30, 150, 60), (220, 140, 0), (140, 60, 170), (0, 160, 170),
            (120, 120, 120), (230, 80, 160)]


def plot_curve(points: list[tuple[float, float]], width: int = 480, height: int = 300) -> np.ndarray:
    return plot_curves({"FID": points}, width=width, height=height, ylabel="FID", legend=False)


def plot_curves(series: dict[str, list[tuple[float, float]]], width: int = 560, height: int = 340,
                ylabel: str = "FID", legend: bool = True) -> np.ndarray:
    """Line plots (y against kimg) as a uint8 RGB image; no plotting library needed."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 60, width - (130 if legend else 15), 15, height - 35
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    draw.rectangle([left, top, right, bottom], outline="black")

    def px(x, y):
        return (left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top))

    for i, (label, pts) in enumerate(series.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        if len(pts) > 1:
            draw.line([px(x, y) for x, y in pts], fill=colour, width=2)
        for x, y in pts:
            cx, cy = px(x, y)
            draw.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=colour)
        if legend:
            draw.text((right + 8, top + 14 * i), str(label)[:18], fill=colour)
    draw.text((left, bottom + 8), f"kimg {x0:.3g} .. {x1:.3g}", fill="black")
    draw.text((5, top), f"{y1:.4g}", fill="black")
    draw.text((5, bottom - 10), f"{y0:.4g}", fill="black")
    draw.text((left + 5, top + 3), ylabel, fill="black")
    return np.asarray(img)


def image_grid(images: np.ndarray, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 N x H x W x C -> one uint8 grid image."""
    n, h, w, c = images.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    ncol = int(np.ceil(n / nrow))
    grid = np.full((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = images[i]
    return grid


def to_uint8(x) -> np.ndarray:
    """float N x C x H x W in [-1, 1] (torch or numpy) -> uint8 N x H x W x C."""
    arr = x.detach().float().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    arr = np.clip((arr + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return arr.transpose(0, 2, 3, 1)


def now() -> float:
    return time.time()
