"""In-memory sources: scikit-learn's digits, MNIST-format IDX files and .npz archives.

Each loader returns the raw pixels (uint8 N x H x W x C at their native size), int64 labels or
None, and a content identity for the fingerprint. All checks run here, on the caller, before
Ray sees anything, so a bad file fails fast and these paths are testable without Ray.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs

from ganray.data.core import DataError, FileEntry, read_bytes, relative
from ganray.data.decode import array_mode

IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC = 2051, 2049
# train-images-idx3-ubyte, t10k-labels-idx1-ubyte.gz, and the common "train-images.idx3-ubyte" spelling
IDX_NAME = re.compile(r"^(train|t10k)-(images|labels)[-.]idx([13])-ubyte(\.gz)?$")


@dataclass
class RawArrays:
    x: np.ndarray  # uint8 N x H x W x C at native size
    y: np.ndarray | None  # int64 (N,) or None
    identity: object  # what the fingerprint hashes


def load_digits_raw() -> RawArrays:
    """scikit-learn's 1,797 8x8 digits, 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    y = d.target.astype(np.int64)
    return RawArrays(x, y, hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest())


# --- IDX (MNIST, Fashion-MNIST, KMNIST) ---


def _gunzip(data: bytes, path: str) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"IDX file {path!r} is not valid gzip: {e}") from None


def parse_idx(data: bytes, path: str, expect_magic: int) -> np.ndarray:
    """IDX bytes -> uint8 array; checks magic (2051 images, 2049 labels) and the body length."""
    if path.endswith(".gz"):
        data = _gunzip(data, path)
    what = "images (magic 2051)" if expect_magic == IDX_IMAGES_MAGIC else "labels (magic 2049)"
    if len(data) < 4:
        raise DataError(f"IDX file {path!r} is truncated: {len(data)} bytes, no header")
    magic = int.from_bytes(data[:4], "big")
    if magic != expect_magic:
        raise DataError(f"IDX file {path!r} has magic number {magic}; expected {expect_magic} for {what}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"IDX file {path!r} is truncated inside its header ({len(data)} bytes)")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims, dtype=np.int64))
    body = len(data) - header
    if body != expected:
        state = "truncated" if body < expected else "longer than its header says"
        raise DataError(
            f"IDX file {path!r} is {state}: header says {' x '.join(map(str, dims))} = {expected} bytes, "
            f"body has {body}"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def idx_files(entries: list[FileEntry], root: str) -> dict[tuple[str, str], FileEntry]:
    """{(split, "images"|"labels"): entry} for the IDX files directly in `root`."""
    found: dict[tuple[str, str], FileEntry] = {}
    for e in entries:
        rel = relative(e.path, root)
        m = IDX_NAME.match(rel)
        if m is None:
            continue
        split, part, dim, _ = m.groups()
        if (part == "images") != (dim == "3"):
            continue
        if (split, part) in found:
            raise DataError(f"IDX folder {root!r} holds both {found[split, part].path!r} and {e.path!r}; keep one")
        found[split, part] = e
    return found


def load_idx_raw(fs: pafs.FileSystem, root: str, entries: list[FileEntry]) -> RawArrays:
    """Every split present (train, then t10k), concatenated; labels when every split has them."""
    found = idx_files(entries, root)
    splits = [s for s in ("train", "t10k") if (s, "images") in found]
    if not splits:
        raise DataError(f"IDX folder {root!r} has no train-images-idx3-ubyte[.gz] or t10k-images-idx3-ubyte[.gz]")
    labelled = [s for s in splits if (s, "labels") in found]
    if labelled and len(labelled) != len(splits):
        missing = [s for s in splits if s not in labelled]
        raise DataError(f"IDX folder {root!r}: {missing[0]}-labels-idx1-ubyte is missing; add it or remove the images")
    xs, ys = [], []
    for s in splits:
        img = found[s, "images"]
        data = read_bytes(fs, img.path)
        x = parse_idx(data, img.path, IDX_IMAGES_MAGIC)
        if x.ndim != 3:
            raise DataError(f"IDX file {img.path!r} has {x.ndim} dimensions; expected N x rows x cols")
        xs.append(x)
        if labelled:
            lab = found[s, "labels"]
            data = read_bytes(fs, lab.path)
            y = parse_idx(data, lab.path, IDX_LABELS_MAGIC)
            if y.shape != (len(x),):
                raise DataError(f"IDX file {lab.path!r} has {y.shape[0]} labels for {len(x)} images in {img.path!r}")
            ys.append(y)
    if len({x.shape[1:] for x in xs}) > 1:
        raise DataError(f"IDX folder {root!r}: image sizes differ between splits {[x.shape[1:] for x in xs]}")
    x = np.concatenate(xs)[..., None]
    y = np.concatenate(ys).astype(np.int64) if labelled else None
    # content, not file names: gzipped and plain copies of the same data share caches
    identity = hashlib.sha256(x.tobytes() + (y.tobytes() if y is not None else b"")).hexdigest()
    return RawArrays(x, y, identity)


# --- .npz ---


def _check_npz_x(x: np.ndarray, path: str) -> np.ndarray:
    """uint8 as is; other integer dtypes only when every value is in 0..255; floats rejected.

    Floats are rejected rather than guessed: [0, 1] and [0, 255] data can look alike (a dark
    image in [0, 255] fits in [0, 1]), and a wrong guess silently trains on the wrong pixels.
    """
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating):
        if np.isnan(x).any():
            raise DataError(f"{path!r}: array 'x' ({x.dtype}) contains NaN; ganray needs uint8 pixels 0..255")
        raise DataError(
            f"{path!r}: array 'x' has dtype {x.dtype}; ganray needs uint8 pixels 0..255 "
            "(convert with np.clip(np.rint(x * 255), 0, 255).astype(np.uint8) for data in [0, 1])"
        )
    if np.issubdtype(x.dtype, np.integer) and x.dtype != np.bool_:
        lo, hi = (int(x.min()), int(x.max())) if x.size else (0, 0)
        if lo < 0 or hi > 255:
            raise DataError(f"{path!r}: array 'x' ({x.dtype}) has values {lo}..{hi}; expected 0..255 (uint8)")
        return x.astype(np.uint8)
    raise DataError(f"{path!r}: array 'x' has dtype {x.dtype}; expected uint8 pixels 0..255")


def _check_npz_y(y: np.ndarray, n: int, path: str) -> np.ndarray:
    if not (np.issubdtype(y.dtype, np.integer) and y.dtype != np.bool_):
        raise DataError(f"{path!r}: array 'y' has dtype {y.dtype}; expected integer class labels")
    if y.shape != (n,):
        raise DataError(f"{path!r}: array 'y' has shape {y.shape}; expected ({n},) to match 'x'")
    return y.astype(np.int64)


def load_npz_raw(fs: pafs.FileSystem, path: str) -> RawArrays:
    data = read_bytes(fs, path)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k in ("x", "y")}
            keys = list(z.files)
    except Exception as e:  # BadZipFile, ValueError (pickled objects), OSError, ...
        raise DataError(f"{path!r} is not a readable .npz archive: {e}") from None
    if "x" not in arrays:
        raise DataError(f"{path!r} has no array 'x' (found {keys or 'no arrays'}); save images as x=uint8 N x H x W[ x C]")
    x = array_mode(_check_npz_x(arrays["x"], path), f"{path!r}: array 'x'")
    y = _check_npz_y(arrays["y"], len(x), path) if "y" in arrays else None
    return RawArrays(x, y, hashlib.sha256(data).hexdigest())
