"""Training input: `load_dataset` (Ray's object store / Ray Data) and `load_arrays` (evaluation).

In-memory arrays (IDX, .npz, digits) whose float rows fit FLOAT_CACHE_MAX_BYTES are resized
and scaled on the driver, which already holds them, and put in Ray's object store in blocks
(`CachedRows`, ganray.data.rows): no Ray Data executor, actors or task workers for data that
needs no streaming. Every other source is a Ray Data pipeline:

    source rows --map_batches(decode / fit)--> uint8 N x H x W x C at the target size
               --materialize (decode once; every bad file is known before training)
               --map_batches(to_model_batch)--> "image" float32 N x C x H x W in [-1, 1], "label" int64
               --materialize (when the floats fit FLOAT_CACHE_MAX_BYTES)
               --randomize_block_order(seed) (fixed, so runs and resumes see the same order; the
               training loop reshuffles rows every epoch with a seed of its own)
               --materialize (cached data only)

Cached data of either kind is split between the workers on the driver, and each worker reads
its split once. Decoding, resizing and scaling never run on the training workers. Data too
large to cache decoded streams instead (files shuffled per epoch): bad files then surface, by
name, or are skipped while iterating.
"""

from __future__ import annotations

import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from ganray.config import DataConfig
from ganray.data.core import DataError, DatasetInfo, fingerprint, read_bytes
from ganray.data.decode import (
    decode_files_batch,
    decode_image,
    decode_parquet_batch,
    fit_array,
    fit_batch,
    to_float,
    to_model_batch,
)
from ganray.data.files import read_parquet_images
from ganray.data.rows import CachedRows, cache_rows
from ganray.data.sources import Prepared, prepare, subset

if TYPE_CHECKING:
    import ray.data

ROWS_PER_BLOCK = 512  # ~0.5 MB of uint8 32x32 per block: tens of blocks for 10k-60k images
MAX_BLOCKS = 64
MATERIALIZE_MAX_BYTES = 2 << 30  # decoded uint8 bytes above which a source streams instead
FLOAT_CACHE_MAX_BYTES = 1 << 30  # float32 rows up to this size are cached in the object store
PROBE_FILES = 8  # files decoded on the caller before a streaming pipeline starts
SEED = 0  # fixed row permutation of in-memory and file sources (data may be sorted by class)


def num_blocks(num_rows: int) -> int:
    return int(min(MAX_BLOCKS, max(1, math.ceil(num_rows / ROWS_PER_BLOCK))))


def _info(prep: Prepared, cfg: DataConfig, skipped: int) -> DatasetInfo:
    return DatasetInfo(
        source=cfg.source,
        kind=prep.kind,
        num_rows=prep.num_rows - skipped,
        num_classes=prep.num_classes,
        resolution=cfg.resolution,
        channels=cfg.channels,
        fingerprint=fingerprint(prep.kind, prep.identity, cfg.resolution, cfg.channels),
        skipped=skipped,
    )


def _labels_or_blank(prep: Prepared) -> np.ndarray:
    return prep.labels if prep.labels is not None else np.full(prep.num_rows, -1, np.int64)


def _bad_images_error(errors: list[str], total: int) -> DataError:
    shown = "; ".join(errors[:3]) + ("; ..." if len(errors) > 3 else "")
    return DataError(
        f"{len(errors)} of {total} images cannot be decoded (set data.skip_bad_images=true to skip them): {shown}"
    )


# --- load_dataset ---


def _decoded_dataset(prep: Prepared, cfg: DataConfig, stream: bool):
    """Lazy Ray Dataset of {"image" uint8 NHWC at target size, "label", "error"}.

    Rows follow a fixed permutation (sources are often sorted by class); a streaming dataset
    also shuffles its files afresh every epoch.
    """
    import ray
    from ray.data.extensions import ArrowTensorArray

    size = {"resolution": cfg.resolution, "channels": cfg.channels}
    order = np.random.default_rng(SEED).permutation(prep.num_rows)
    blocks = np.array_split(order, num_blocks(prep.num_rows))
    if prep.raw is not None:
        x, y = prep.raw.x, _labels_or_blank(prep)
        tables = [pa.table({"image": ArrowTensorArray.from_numpy(x[b]), "label": pa.array(y[b])}) for b in blocks]
        return ray.data.from_arrow(tables).map_batches(
            fit_batch, batch_size=None, fn_kwargs=size, udf_modifying_row_count=False
        )
    if prep.folder is not None:
        class_index = {c: i for i, c in enumerate(prep.folder.class_names)}
        paths = [prep.folder.files[i].path for i in order]
        ds = ray.data.read_binary_files(
            paths, include_paths=True, filesystem=prep.fs, override_num_blocks=len(blocks),
            shuffle="files" if stream else None,
        )
        return ds.map_batches(
            decode_files_batch, batch_size=None, fn_kwargs={"root": prep.root, "class_index": class_index, **size}
        )
    plan = prep.plan
    columns = [plan.image_column] + ([plan.label_column] if plan.label_column else [])
    ds = ray.data.read_parquet(
        [e.path for e in plan.files], filesystem=prep.fs, include_paths=True, partitioning=None,
        override_num_blocks=len(blocks), shuffle="files" if stream else None,
    ).select_columns(columns + ["path"])  # projection is pushed down into the reader
    kwargs = {"image_column": plan.image_column, "label_column": plan.label_column, **size}
    return ds.map_batches(decode_parquet_batch, batch_size=None, fn_kwargs=kwargs)


def _probe(prep: Prepared, cfg: DataConfig) -> None:
    """Streaming sources: decode a few files here so systematic problems fail before training."""
    if PROBE_FILES <= 0:
        return
    rows = subset(prep.num_rows, PROBE_FILES)
    _, _, errors = _decode_all(_encoded(prep, rows), cfg)
    if errors and (not cfg.skip_bad_images or len(errors) == len(rows)):
        raise _bad_images_error(errors, len(rows))


def _root_cause(err: BaseException) -> str:
    """"SomeError: message" of the innermost error; Ray errors carry it as traceback text."""
    import ray

    if not isinstance(err, ray.exceptions.RayError):
        return f"{type(err).__name__}: {err}"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    named = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b.*:", line)]
    return (named or lines or [type(err).__name__])[0]


def _count_bad(decoded, prep: Prepared, cfg: DataConfig) -> int:
    """Bad images in a materialized decode: all named in one DataError, or counted when skipping."""
    errors = [
        str(e)
        for batch in decoded.select_columns(["error"]).iter_batches(batch_size=None, batch_format="numpy")
        for e in batch["error"]
        if e
    ]
    if errors and not cfg.skip_bad_images:
        raise _bad_images_error(errors, prep.num_rows)
    if len(errors) == prep.num_rows:
        raise DataError(f"data.source {cfg.source!r}: none of its {len(errors)} images can be decoded")
    return len(errors)


def load_dataset(
    data_cfg: DataConfig, *, materialize_max_bytes: int | None = None, float_cache_max_bytes: int | None = None
) -> tuple[ray.data.Dataset, DatasetInfo]:
    """(training rows: "image" float32 C x H x W in [-1, 1] and "label" int64 (-1: none), DatasetInfo).

    Checks run before anything trains: the listing, headers and labels on the caller, then (for
    data whose decoded uint8 fits `materialize_max_bytes`, default 2 GiB) every image is decoded
    once into Ray's object store and every bad file is reported by name, or counted when
    data.skip_bad_images is set. When the float32 rows fit `float_cache_max_bytes` (default
    1 GiB) they are cached: CachedRows for in-memory arrays, a MaterializedDataset for decoded
    files (`is_cached`); a worker reads its split once and permutes it in memory every epoch.
    Larger data is a streaming Ray Dataset.
    """
    prep = prepare(data_cfg.source, data_cfg.num_classes)
    pixels = prep.num_rows * data_cfg.resolution**2 * data_cfg.channels
    stream = pixels > (MATERIALIZE_MAX_BYTES if materialize_max_bytes is None else materialize_max_bytes)
    to_model = {"fn": to_model_batch, "batch_size": None, "fn_kwargs": {"skip_bad_images": data_cfg.skip_bad_images}}
    cache_floats = 4 * pixels <= (FLOAT_CACHE_MAX_BYTES if float_cache_max_bytes is None else float_cache_max_bytes)
    if prep.raw is not None and cache_floats and not stream:
        return _array_rows(prep, data_cfg), _info(prep, data_cfg, 0)
    try:
        decoded = _decoded_dataset(prep, data_cfg, stream)
        if stream:
            if prep.raw is None:
                _probe(prep, data_cfg)
            return decoded.map_batches(**to_model), _info(prep, data_cfg, 0)
        decoded = decoded.materialize()
    except DataError:
        raise
    except Exception as e:  # a file vanished or became unreadable since the listing, network errors
        raise DataError(f"reading data.source {data_cfg.source!r} failed: {_root_cause(e)}") from e
    skipped = _count_bad(decoded, prep, data_cfg)
    if prep.plan is not None:  # Parquet rows may be sorted by class: shuffle them once
        decoded = decoded.random_shuffle(seed=SEED).materialize()
    if cache_floats:
        ds = _cached(decoded.map_batches(**to_model))
    else:
        ds = decoded.randomize_block_order(seed=SEED).map_batches(**to_model)
    return ds, _info(prep, data_cfg, skipped)


def _array_rows(prep: Prepared, cfg: DataConfig) -> CachedRows:
    """In-memory arrays whose floats fit the cache, resized and scaled here, where they already
    are (Pillow releases the GIL while resizing, so blocks run in threads), in the Ray Data
    path's seeded row permutation and blocks (its block-order shuffle adds nothing to a row
    permutation and is left out). Arrays cannot fail to decode: nothing to count."""
    order = np.random.default_rng(SEED).permutation(prep.num_rows)
    labels = _labels_or_blank(prep)

    def block(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return to_float(fit_array(prep.raw.x[rows], cfg.resolution, cfg.channels)), labels[rows]

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return cache_rows(pool.map(block, np.array_split(order, num_blocks(prep.num_rows))))


def _cached(ds):
    """Rows computed once, block order shuffled once (seeded) and kept: a MaterializedDataset,
    which the driver splits between the workers itself (launch.worker_splits)."""
    return ds.materialize().randomize_block_order(seed=SEED).materialize()


def is_cached(dataset) -> bool:
    """Whether a load_dataset result (or a split of one) holds cached rows: CachedRows (arrays)
    or a MaterializedDataset (decoded files); a streaming Dataset otherwise."""
    from ray.data.dataset import MaterializedDataset

    return isinstance(dataset, (CachedRows, MaterializedDataset))


def split_cached(dataset, n: int) -> list:
    """`n` equal, disjoint parts of cached rows (the last len % n rows are left out); nothing is
    read or copied."""
    return dataset.split(n) if isinstance(dataset, CachedRows) else dataset.split(n, equal=True)


def read_cached(split) -> tuple[np.ndarray, np.ndarray]:
    """(image, label) of a cached split, in order: CachedRows from the object store, a
    MaterializedDataset through Ray Data."""
    if isinstance(split, CachedRows):
        return split.read()
    images, labels = [], []
    for block in split.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
        images.append(block["image"])
        labels.append(block["label"])
    if not images:
        return np.empty(0, np.float32), np.empty(0, np.int64)
    return np.concatenate(images), np.concatenate(labels)


# --- load_arrays ---


def _encoded(prep: Prepared, rows: np.ndarray) -> list[tuple[bytes | DataError, str]]:
    """(encoded bytes, or the read error, and a name) of file-backed rows, fetched in threads."""
    if prep.plan is not None:
        return read_parquet_images(prep.fs, prep.plan, rows)
    paths = [prep.folder.files[i].path for i in rows]

    def fetch(path: str) -> bytes | DataError:
        try:
            return read_bytes(prep.fs, path)
        except DataError as e:
            return e

    with ThreadPoolExecutor(max_workers=16) as pool:  # I/O bound on object stores
        return list(zip(pool.map(fetch, paths), paths))


def _decode_all(encoded, cfg: DataConfig) -> tuple[list[np.ndarray], list[int], list[str]]:
    """Decoded images, the indices they came from, and one message per bad image."""
    images, keep, errors = [], [], []
    for i, (data, name) in enumerate(encoded):
        try:
            if isinstance(data, DataError):
                raise data
            images.append(decode_image(data, name, cfg.resolution, cfg.channels))
            keep.append(i)
        except DataError as e:
            errors.append(str(e))
    return images, keep, errors


def load_arrays(data_cfg: DataConfig, limit: int | None = None) -> tuple[np.ndarray, np.ndarray | None, DatasetInfo]:
    """(uint8 N x H x W x C at the configured size, int64 labels or None, DatasetInfo).

    Same pixels as `load_dataset` (x_float = u8 / 127.5 - 1), in source order. `limit` takes a
    seeded random subset (sorted back into source order), since sources may be sorted by class.
    Runs on the caller, without Ray. With a limit, `info.skipped` counts bad images in the subset.
    """
    prep = prepare(data_cfg.source, data_cfg.num_classes)
    rows = subset(prep.num_rows, limit)
    size = (data_cfg.resolution, data_cfg.channels)
    labels = prep.labels[rows] if prep.labels is not None else None
    if prep.raw is not None:
        return fit_array(prep.raw.x[rows], *size), labels, _info(prep, data_cfg, 0)
    images, keep, errors = _decode_all(_encoded(prep, rows), data_cfg)
    if errors and not data_cfg.skip_bad_images:
        raise _bad_images_error(errors, len(rows))
    if not images:
        raise DataError(f"data.source {data_cfg.source!r}: none of the {len(rows)} images read can be decoded")
    x = np.stack(images)
    return x, (labels[keep] if labels is not None else None), _info(prep, data_cfg, len(errors))
