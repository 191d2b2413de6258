"""Shared pieces of the data package: the error type, DatasetInfo, file-system access.

Every source goes through pyarrow's file systems, so a local path and an ``s3://`` or
``gs://`` URI take the same code path (a plain local path is a ``LocalFileSystem``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import pyarrow.fs as pafs

# Bump when decoding or resizing changes pixels: it is part of every fingerprint, so
# caches keyed on the fingerprint (e.g. real-data FID statistics) are invalidated.
DECODE_VERSION = "1"

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
PARQUET_EXTENSIONS = (".parquet", ".pq")
KINDS = ("digits", "idx", "images", "parquet", "npz")


class DataError(ValueError):
    """The data source is missing, empty, corrupt or inconsistent; the message names the file/column."""


@dataclass(frozen=True)
class DatasetInfo:
    source: str
    kind: str  # one of KINDS
    num_rows: int
    num_classes: int | None  # None when unlabelled
    resolution: int
    channels: int
    # Stable hash of (kind, content identity, resolution, channels, DECODE_VERSION); keys caches.
    fingerprint: str
    skipped: int = 0  # bad images skipped with data.skip_bad_images


@dataclass(frozen=True)
class FileEntry:
    path: str  # file-system path (no scheme), as pyarrow and Ray readers expect with `filesystem`
    size: int
    mtime_ns: int


def is_uri(source: str) -> bool:
    return "://" in source


def resolve(source: str) -> tuple[pafs.FileSystem, str]:
    """(file system, path inside it) for a local path or any URI pyarrow understands."""
    if is_uri(source):
        try:
            fs, path = pafs.FileSystem.from_uri(source)
        except (ValueError, OSError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise DataError(f"data.source {source!r}: cannot open this URI: {e}") from None
        return fs, path.rstrip("/") or "/"
    path = os.path.abspath(os.path.expanduser(source))
    return pafs.LocalFileSystem(), path


def path_type(fs: pafs.FileSystem, path: str, source: str) -> pafs.FileType:
    try:
        info = fs.get_file_info(path)
    except OSError as e:
        raise DataError(f"data.source {source!r}: cannot access it: {e}") from None
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"data.source {source!r} does not exist")
    return info.type


def list_files(fs: pafs.FileSystem, root: str, source: str) -> list[FileEntry]:
    """Every regular file under `root`, recursively, sorted by path; hidden files/folders skipped."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except OSError as e:
        raise DataError(f"data.source {source!r}: cannot list the folder: {e}") from None
    out = []
    for info in infos:
        rel = relative(info.path, root)
        if info.type != pafs.FileType.File or any(p.startswith(".") for p in rel.split("/")):
            continue
        out.append(FileEntry(info.path, int(info.size or 0), int(info.mtime_ns or 0)))
    return sorted(out, key=lambda e: e.path)


def file_entry(fs: pafs.FileSystem, path: str) -> FileEntry:
    info = fs.get_file_info(path)
    return FileEntry(info.path, int(info.size or 0), int(info.mtime_ns or 0))


def relative(path: str, root: str) -> str:
    root = root.rstrip("/")
    return path[len(root) + 1 :] if path.startswith(root + "/") else path


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    """Whole file as bytes; raises DataError naming the file when it cannot be read."""
    try:
        with fs.open_input_stream(path, compression=None) as f:  # default would gunzip *.gz
            return f.read()
    except OSError as e:
        raise DataError(f"cannot read {path!r}: {e}") from None


def fingerprint(kind: str, identity: object, resolution: int, channels: int) -> str:
    """sha256 over a canonical repr; `identity` is content-derived (names, sizes, mtimes or hashes)."""
    text = repr((DECODE_VERSION, kind, identity, int(resolution), int(channels)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def files_identity(entries: list[FileEntry], root: str) -> list[tuple[str, int, int]]:
    """Relative names, sizes and mtimes: cheap to compute for thousands of remote objects."""
    return [(relative(e.path, root), e.size, e.mtime_ns) for e in entries]
