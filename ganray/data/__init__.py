"""Training data: sources (digits, IDX, image folders, Parquet, .npz, any of them on a URI) -> Ray.

    ds, info = load_dataset(cfg.data)        # "image" float32 C x H x W in [-1, 1], "label" int64
    x, y, info = load_arrays(cfg.data, limit=10_000)   # uint8 N x H x W x C, same pixels

Modules: core (errors, DatasetInfo, file systems), decode (pixels), arrays (digits, IDX, npz),
files (image folders, Parquet), sources (detection, label checks), rows (cached arrays in
Ray's object store), pipeline (load_dataset, load_arrays).
"""

from ganray.data.core import DataError, DatasetInfo
from ganray.data.pipeline import is_cached, load_arrays, load_dataset, read_cached, split_cached
from ganray.data.rows import CachedRows
from ganray.data.sources import detect_kind

__all__ = ["CachedRows", "DataError", "DatasetInfo", "detect_kind", "is_cached", "load_arrays", "load_dataset",
           "read_cached", "split_cached"]
