"""Source detection and the checks every source passes on the caller, before Ray is involved.

`prepare` turns `data.source` into a `Prepared` description (kind, files or raw arrays, labels,
fingerprint identity). Both `load_dataset` and `load_arrays` start from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow.fs as pafs

from ganray.data.arrays import IDX_NAME, RawArrays, idx_files, load_digits_raw, load_idx_raw, load_npz_raw
from ganray.data.core import (
    IMAGE_EXTENSIONS,
    PARQUET_EXTENSIONS,
    DataError,
    FileEntry,
    file_entry,
    files_identity,
    list_files,
    path_type,
    relative,
    resolve,
)
from ganray.data.files import ImageFolder, ParquetPlan, scan_image_folder, scan_parquet

MAX_CLASSES = 10_000  # the bound on data.num_classes in config.py


@dataclass
class Scan:
    kind: str
    fs: pafs.FileSystem | None = None
    root: str = ""  # folder (or the file itself for npz / a single Parquet file)
    entries: list[FileEntry] = field(default_factory=list)


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def scan(source: str) -> Scan:
    """Find what `source` holds; raises DataError for a missing path, empty folder, unknown files."""
    if source == "digits":
        return Scan("digits")
    fs, path = resolve(source)
    if path_type(fs, path, source) == pafs.FileType.File:
        name = path.rsplit("/", 1)[-1]
        if name.lower().endswith(".npz"):
            return Scan("npz", fs, path, [file_entry(fs, path)])
        if name.lower().endswith(PARQUET_EXTENSIONS):
            return Scan("parquet", fs, _parent(path), [file_entry(fs, path)])
        m = IDX_NAME.match(name)
        if m:  # a single IDX file: that split, with its labels file when it sits beside it
            root = _parent(path)
            same_split = [e for e in list_files(fs, root, source) if relative(e.path, root).startswith(m.group(1) + "-")]
            return Scan("idx", fs, root, same_split)
        hint = "; point data.source at the folder of images" if name.lower().endswith(IMAGE_EXTENSIONS) else ""
        raise DataError(
            f"data.source {source!r} is a file of unsupported type; expected .npz, .parquet or an IDX file{hint}"
        )
    entries = list_files(fs, path, source)
    if not entries:
        raise DataError(f"data.source {source!r} is an empty folder")
    names = [relative(e.path, path).lower() for e in entries]
    if idx_files(entries, path):
        return Scan("idx", fs, path, entries)
    if any(n.endswith(PARQUET_EXTENSIONS) for n in names):
        return Scan("parquet", fs, path, entries)
    if any(n.endswith(IMAGE_EXTENSIONS) for n in names):
        return Scan("images", fs, path, entries)
    raise DataError(
        f"data.source {source!r} holds no supported files (MNIST-format IDX, .parquet, or images "
        f"{', '.join(IMAGE_EXTENSIONS)}); found e.g. {names[:3]}"
        + ("; point data.source at the .npz file itself" if any(n.endswith(".npz") for n in names) else "")
    )


def detect_kind(source: str) -> str:
    """"digits" | "idx" | "images" | "parquet" | "npz" for a source string (path or URI)."""
    return scan(source).kind


@dataclass
class Prepared:
    source: str
    kind: str
    fs: pafs.FileSystem | None
    root: str
    num_rows: int  # before any bad image is skipped
    labels: np.ndarray | None  # int64 per row, None when unlabelled
    num_classes: int | None
    identity: object
    raw: RawArrays | None = None  # digits, idx, npz
    folder: ImageFolder | None = None  # images
    plan: ParquetPlan | None = None  # parquet


def check_labels(labels: np.ndarray | None, num_classes: int | None, source: str, known: int | None = None) -> int | None:
    """Number of classes: data.num_classes when set (every label must be below it), else max + 1."""
    if labels is None:
        if num_classes is not None:
            raise DataError(f"data.num_classes={num_classes} is set, but data.source {source!r} has no labels")
        return None
    if num_classes is not None:
        if known is not None and known > num_classes:
            raise DataError(f"data.source {source!r} has {known} class folders but data.num_classes={num_classes}")
        bad = (labels < 0) | (labels >= num_classes)
        if bad.any():
            raise DataError(
                f"data.source {source!r}: {int(bad.sum())} labels outside [0, {num_classes}) "
                f"(data.num_classes={num_classes}), e.g. {sorted(set(labels[bad].tolist()))[:5]}"
            )
        return num_classes
    if len(labels) and labels.min() < 0:
        raise DataError(f"data.source {source!r} has negative labels (min {int(labels.min())}); labels must be 0..K-1")
    inferred = known if known is not None else (int(labels.max()) + 1 if len(labels) else 0)
    if inferred > MAX_CLASSES:
        raise DataError(f"data.source {source!r}: largest label {inferred - 1} means more than {MAX_CLASSES} classes")
    return inferred


def prepare(source: str, num_classes: int | None) -> Prepared:
    s = scan(source)
    raw = folder = plan = None
    if s.kind == "digits":
        raw = load_digits_raw()
    elif s.kind == "idx":
        raw = load_idx_raw(s.fs, s.root, s.entries)
    elif s.kind == "npz":
        raw = load_npz_raw(s.fs, s.root)
    if raw is not None:
        rows, labels, known, identity = len(raw.x), raw.y, None, raw.identity
    elif s.kind == "images":
        folder = scan_image_folder(s.root, s.entries, source)
        rows, labels = len(folder.files), folder.labels(s.root)
        known = len(folder.class_names) if folder.class_names else None
        identity = (files_identity(folder.files, s.root), folder.class_names)
    else:
        plan = scan_parquet(s.fs, s.root, s.entries, source)
        rows, labels, known = plan.num_rows, plan.labels, None
        identity = (files_identity(plan.files, s.root), plan.image_column, plan.label_column)
    if rows == 0:
        raise DataError(f"data.source {source!r} holds no images (0 rows)")
    classes = check_labels(labels, num_classes, source, known)
    return Prepared(source, s.kind, s.fs, s.root, rows, labels, classes, identity, raw, folder, plan)


def subset(num_rows: int, limit: int | None) -> np.ndarray:
    """Sorted row indices: all rows, or a seeded random `limit` of them (data may be sorted by class)."""
    if limit is None or limit >= num_rows:
        return np.arange(num_rows)
    if limit < 1:
        raise DataError(f"limit must be at least 1, got {limit}")
    return np.sort(np.random.default_rng(0).choice(num_rows, size=limit, replace=False))
