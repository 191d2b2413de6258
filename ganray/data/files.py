"""File sources checked on the caller before Ray reads them: image folders and Parquet files.

Cheap checks only: listings, class folders, Parquet footers (schemas, row counts) and the
label column. Pixels are decoded later, inside Ray Data (or by `load_arrays`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ganray.data.core import IMAGE_EXTENSIONS, PARQUET_EXTENSIONS, DataError, FileEntry, relative

IMAGE_COLUMN_NAMES = ("image", "img", "bytes")
LABEL_COLUMN_NAMES = ("label", "labels", "y")


@dataclass
class ImageFolder:
    files: list[FileEntry]  # sorted by path
    class_names: list[str]  # sorted; label = index; empty when unlabelled

    def labels(self, root: str) -> np.ndarray | None:
        if not self.class_names:
            return None
        index = {c: i for i, c in enumerate(self.class_names)}
        return np.array([index[relative(e.path, root).split("/")[0]] for e in self.files], np.int64)


def scan_image_folder(root: str, entries: list[FileEntry], source: str) -> ImageFolder:
    """Images directly in `root` (unlabelled) or in class sub-folders (label = sorted folder index)."""
    files = [e for e in entries if e.path.lower().endswith(IMAGE_EXTENSIONS)]
    if not files:
        raise DataError(f"data.source {source!r}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the folder")
    top = [e for e in files if "/" not in relative(e.path, root)]
    nested = [e for e in files if "/" in relative(e.path, root)]
    if top and nested:
        raise DataError(
            f"data.source {source!r} has images both directly in the folder ({relative(top[0].path, root)!r}) "
            f"and in class sub-folders ({relative(nested[0].path, root)!r}); use class folders for all or none"
        )
    classes = sorted({relative(e.path, root).split("/")[0] for e in nested})
    return ImageFolder(files, classes)


# --- Parquet ---


@dataclass
class ParquetPlan:
    files: list[FileEntry]
    image_column: str
    label_column: str | None
    rows_per_file: list[int]
    labels: np.ndarray | None  # int64, all rows in file order

    @property
    def num_rows(self) -> int:
        return sum(self.rows_per_file)


def _is_image_type(t: pa.DataType) -> bool:
    """Encoded bytes, or a Hugging Face `Image` feature (struct<bytes: binary, path: string>)."""
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return True
    if pa.types.is_struct(t):
        idx = t.get_field_index("bytes")
        return idx >= 0 and _is_image_type(t.field(idx).type) and not pa.types.is_struct(t.field(idx).type)
    return False


def _describe(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in schema)


def choose_columns(schema: pa.Schema, path: str) -> tuple[str, str | None]:
    """(image column, label column or None) by type and conventional names."""
    candidates = [f.name for f in schema if _is_image_type(f.type)]
    named = [n for n in IMAGE_COLUMN_NAMES if n in candidates]
    if named:
        image = named[0]
    elif len(candidates) == 1:
        image = candidates[0]
    elif not candidates:
        wrong = [n for n in IMAGE_COLUMN_NAMES if n in schema.names]
        why = f"column {wrong[0]!r} has type {schema.field(wrong[0]).type}, not binary; " if wrong else ""
        raise DataError(
            f"Parquet file {path!r} has no image column: {why}expected a binary column of encoded "
            f"PNG/JPEG bytes (named one of {IMAGE_COLUMN_NAMES}); columns are {_describe(schema)}"
        )
    else:
        raise DataError(
            f"Parquet file {path!r} has several binary columns {candidates}; name the image column "
            f"one of {IMAGE_COLUMN_NAMES}"
        )
    label = next((n for n in LABEL_COLUMN_NAMES if n in schema.names), None)
    if label is not None and not pa.types.is_integer(schema.field(label).type):
        raise DataError(
            f"Parquet file {path!r}: label column {label!r} has type {schema.field(label).type}; "
            "expected integer class labels"
        )
    return image, label


def _open(fs: pafs.FileSystem, path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(fs.open_input_file(path))
    except Exception as e:  # ArrowInvalid (bad footer/magic), OSError
        raise DataError(f"Parquet file {path!r} cannot be read: {e}") from None


def scan_parquet(fs: pafs.FileSystem, root: str, entries: list[FileEntry], source: str) -> ParquetPlan:
    """Footers of every file must agree on the image and label columns; reads the labels."""
    files = [e for e in entries if e.path.lower().endswith(PARQUET_EXTENSIONS)]
    if not files:
        raise DataError(f"data.source {source!r}: no Parquet files ({', '.join(PARQUET_EXTENSIONS)})")
    first = _open(fs, files[0].path)
    image, label = choose_columns(first.schema_arrow, files[0].path)
    image_type = first.schema_arrow.field(image).type
    rows, labels = [], []
    for e in files:
        pf = first if e is files[0] else _open(fs, e.path)
        schema = pf.schema_arrow
        if image not in schema.names or schema.field(image).type != image_type:
            got = f"type {schema.field(image).type}" if image in schema.names else "no such column"
            raise DataError(
                f"Parquet file {e.path!r} disagrees with {files[0].path!r}: image column {image!r} "
                f"should be {image_type}, found {got}; columns are {_describe(schema)}"
            )
        if label is not None and (label not in schema.names or not pa.types.is_integer(schema.field(label).type)):
            raise DataError(
                f"Parquet file {e.path!r} disagrees with {files[0].path!r}: it lacks the integer label "
                f"column {label!r}; columns are {_describe(schema)}"
            )
        rows.append(pf.metadata.num_rows)
        if label is not None:
            col = pf.read(columns=[label]).column(label)
            if col.null_count:
                raise DataError(f"Parquet file {e.path!r}: label column {label!r} has {col.null_count} null values")
            labels.append(col.to_numpy().astype(np.int64))
    y = np.concatenate(labels) if label is not None else None
    return ParquetPlan(files, image, label, rows, y)


def read_parquet_images(fs: pafs.FileSystem, plan: ParquetPlan, rows: np.ndarray) -> list[tuple[bytes, str]]:
    """(encoded bytes, name for messages) of the given global row indices, in order (load_arrays)."""
    out: list[tuple[bytes, str]] = []
    start = 0
    for e, n in zip(plan.files, plan.rows_per_file):
        local = rows[(rows >= start) & (rows < start + n)] - start
        start += n
        if not len(local):
            continue
        col = _open(fs, e.path).read(columns=[plan.image_column]).column(plan.image_column)
        for value in col.take(pa.array(local)).to_pylist():
            inner = value.get("path") if isinstance(value, dict) else None
            data = value.get("bytes") if isinstance(value, dict) else value
            out.append((data, f"{e.path}: column {plan.image_column!r}" + (f" (image {inner})" if inner else "")))
    return out
