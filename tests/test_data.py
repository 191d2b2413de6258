"""ganray.data: every source kind, detection, pixel and label correctness, fingerprints.

Most tests run without Ray (load_arrays and the checks share the code load_dataset uses);
the few marked `ray` build real Ray Data pipelines on tiny data and on the MNIST test set.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from ganray.config import DataConfig
from ganray.data import CachedRows, DataError, DatasetInfo, detect_kind, is_cached, load_arrays, load_dataset
from ganray.data.decode import decode_image, to_float
from ganray.data.rows import cache_rows

MNIST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # from shared/data/mnist/README.md
MNIST_MD5 = "2646ac647ad5339dbf082846283269ea"  # md5 of the uncompressed t10k images file


def cfg(source, **kw) -> DataConfig:
    return DataConfig(source=str(source), **kw)


def png_bytes(a: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt)
    return buf.getvalue()


def make_folder(root, classes: dict[str, list[np.ndarray]] | list[np.ndarray], ext: str = "png"):
    """Write images to root (a list: unlabelled) or root/<class>/ (a dict); returns root."""
    groups = classes.items() if isinstance(classes, dict) else [("", classes)]
    for name, arrays in groups:
        folder = root / name if name else root
        folder.mkdir(parents=True, exist_ok=True)
        for i, a in enumerate(arrays):
            Image.fromarray(a).save(folder / f"{i:03d}.{ext}")
    return root


def rand_u8(rng, *shape) -> np.ndarray:
    return rng.integers(0, 256, shape, dtype=np.uint8)


# --- detection ---


def test_detect_kind_every_source(tmp_path, mnist_dir):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "a.npz", x=rand_u8(rng, 2, 8, 8))
    make_folder(tmp_path / "imgs", [rand_u8(rng, 8, 8)])
    (tmp_path / "pq").mkdir()
    pq.write_table(pa.table({"image": [png_bytes(rand_u8(rng, 8, 8))]}), tmp_path / "pq" / "part-0.parquet")
    assert detect_kind("digits") == "digits"
    assert detect_kind(str(mnist_dir)) == "idx"
    assert detect_kind(str(mnist_dir / "t10k-images-idx3-ubyte.gz")) == "idx"
    assert detect_kind("file://" + str(mnist_dir)) == "idx"  # the URI path (pyarrow FileSystem.from_uri)
    assert detect_kind(str(tmp_path / "a.npz")) == "npz"
    assert detect_kind(str(tmp_path / "imgs")) == "images"
    assert detect_kind(str(tmp_path / "pq")) == "parquet"
    assert detect_kind(str(tmp_path / "pq" / "part-0.parquet")) == "parquet"
    with pytest.raises(DataError, match="does not exist"):
        detect_kind(str(tmp_path / "nope"))


# --- digits and IDX ---


def test_digits_are_upsampled_real_digits():
    x, y, info = load_arrays(cfg("digits", resolution=32))
    assert x.shape == (1797, 32, 32, 1) and x.dtype == np.uint8
    assert info == DatasetInfo("digits", "digits", 1797, 10, 32, 1, info.fingerprint)
    assert np.bincount(y).tolist() == np.bincount(load_arrays(cfg("digits", resolution=16))[1]).tolist()
    assert set(y.tolist()) == set(range(10)) and x.max() == 255 and x.min() == 0
    # bicubic upsampling keeps the 8x8 mean brightness (0..16 scaled to 0..255) closely
    from sklearn.datasets import load_digits

    small = load_digits().images * 255 / 16
    assert abs(x.mean() - small.mean()) < 2.0
    assert np.abs(x.reshape(1797, -1).mean(1) - small.reshape(1797, -1).mean(1)).max() < 8.0


def test_mnist_idx_exact_pixels_and_labels(mnist_dir):
    x, y, info = load_arrays(cfg(mnist_dir, resolution=32))
    assert info.kind == "idx" and info.num_rows == 10_000 and info.num_classes == 10
    assert np.bincount(y).tolist() == MNIST_COUNTS
    assert x.shape == (10_000, 32, 32, 1)
    # at the target size equal to the native size no pixel changes: the body reproduces the file's md5
    x16, _, _ = load_arrays(cfg(mnist_dir, resolution=16))
    raw = gzip.decompress((mnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes())
    from ganray.data.arrays import parse_idx

    native = parse_idx(raw, "t10k", 2051)
    assert hashlib.md5(raw).hexdigest() == MNIST_MD5 and native.shape == (10_000, 28, 28)
    from ganray.data.decode import fit_array

    assert np.array_equal(fit_array(native[:50, :, :, None], 16, 1), x16[:50])


def test_idx_plain_and_gzip_agree_and_share_fingerprint(tmp_path, mnist_dir):
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(gzip.decompress((mnist_dir / f"{name}.gz").read_bytes()))
    a = load_arrays(cfg(tmp_path, resolution=16), limit=100)
    b = load_arrays(cfg(mnist_dir, resolution=16), limit=100)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert a[2].fingerprint == b[2].fingerprint
    assert load_arrays(cfg(mnist_dir, resolution=32), limit=1)[2].fingerprint != b[2].fingerprint
    images = bytearray((tmp_path / "t10k-images-idx3-ubyte").read_bytes())
    images[-1] ^= 0xFF  # one pixel of the last image changes
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(bytes(images))
    assert load_arrays(cfg(tmp_path, resolution=16), limit=1)[2].fingerprint != b[2].fingerprint


def test_channels_three_replicates_grey(mnist_dir):
    x, _, info = load_arrays(cfg(mnist_dir, channels=3), limit=20)
    assert x.shape == (20, 32, 32, 3) and info.channels == 3
    assert np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 0], x[..., 2])


def test_limit_is_a_seeded_subset_in_source_order(mnist_dir):
    full_x, full_y, _ = load_arrays(cfg(mnist_dir, resolution=16))
    x, y, info = load_arrays(cfg(mnist_dir, resolution=16), limit=300)
    again = load_arrays(cfg(mnist_dir, resolution=16), limit=300)
    assert len(x) == 300 and np.array_equal(x, again[0]) and info.num_rows == 10_000
    rows = [int(np.flatnonzero((full_x == xi).all(axis=(1, 2, 3)))[0]) for xi in x[:20]]
    assert rows == sorted(rows) and max(rows) > 300  # not simply the first 300
    assert np.array_equal(full_y[rows], y[:20])


# --- npz ---


def test_npz_grey_and_rgb(tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "g.npz", x=rand_u8(rng, 5, 16, 16), y=np.arange(5))
    np.savez(tmp_path / "c.npz", x=rand_u8(rng, 4, 16, 16, 3))
    xg, yg, ig = load_arrays(cfg(tmp_path / "g.npz", resolution=16))
    assert xg.shape == (5, 16, 16, 1) and yg.tolist() == [0, 1, 2, 3, 4] and ig.num_classes == 5
    assert np.array_equal(xg[..., 0], np.load(tmp_path / "g.npz")["x"])  # same size: untouched
    xc, yc, ic = load_arrays(cfg(tmp_path / "c.npz", resolution=16, channels=3))
    assert yc is None and ic.num_classes is None and np.array_equal(xc, np.load(tmp_path / "c.npz")["x"])
    # RGB -> grey uses the ITU-R 601-2 luma transform (as Pillow does)
    xl, _, _ = load_arrays(cfg(tmp_path / "c.npz", resolution=16, channels=1))
    rgb = np.load(tmp_path / "c.npz")["x"].astype(np.float64)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    assert np.abs(xl[..., 0] - luma).max() <= 1.0


def test_npz_small_integer_dtype_is_accepted(tmp_path):
    np.savez(tmp_path / "i.npz", x=np.full((2, 16, 16), 200, np.int64))
    x, _, _ = load_arrays(cfg(tmp_path / "i.npz", resolution=16))
    assert x.dtype == np.uint8 and (x == 200).all()


# --- image folders ---


def test_image_folder_labels_from_sorted_class_folders(tmp_path):
    rng = np.random.default_rng(2)
    root = make_folder(tmp_path / "d", {"zebra": [rand_u8(rng, 16, 16, 3)] * 2, "apple": [rand_u8(rng, 16, 16, 3)]})
    x, y, info = load_arrays(cfg(root, resolution=16, channels=3))
    assert (info.kind, info.num_rows, info.num_classes) == ("images", 3, 2)
    assert y.tolist() == [0, 1, 1]  # apple -> 0, zebra -> 1 (sorted names), files in path order
    assert np.array_equal(x[0], np.asarray(Image.open(root / "apple" / "000.png")))


def test_unlabelled_folder_and_non_square_centre_crop(tmp_path):
    a = np.zeros((16, 48, 3), np.uint8)
    a[:, 16:32] = 255  # a white centre square between black side bands
    root = make_folder(tmp_path / "u", [a])
    (root / "README.txt").write_text("not an image, ignored")
    x, y, info = load_arrays(cfg(root, resolution=16, channels=3))
    assert y is None and info.num_classes is None and info.num_rows == 1
    assert (x == 255).all()  # the side bands were cropped away, no distortion


def test_jpeg_decodes_close_to_source(tmp_path):
    a = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "a.jpg").write_bytes(png_bytes(a, "JPEG"))
    x, _, _ = load_arrays(cfg(tmp_path / "j", resolution=32))
    expected = np.asarray(Image.fromarray(a).resize((32, 32), Image.Resampling.BICUBIC))
    assert np.abs(x[0, :, :, 0].astype(int) - expected).mean() < 3.0


def test_num_classes_from_config(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((3, 8, 8), np.uint8), y=np.array([0, 1, 1]))
    assert load_arrays(cfg(tmp_path / "a.npz", resolution=16, num_classes=5))[2].num_classes == 5
    assert load_arrays(cfg(tmp_path / "a.npz", resolution=16))[2].num_classes == 2


# --- Parquet ---


def test_parquet_named_autodetected_and_hugging_face_columns(tmp_path):
    rng = np.random.default_rng(3)
    imgs = [rand_u8(rng, 16, 16) for _ in range(4)]
    enc = [png_bytes(a) for a in imgs]
    (tmp_path / "p").mkdir()
    pq.write_table(pa.table({"image": enc[:2], "label": [3, 1]}), tmp_path / "p" / "a.parquet")
    pq.write_table(pa.table({"image": enc[2:], "label": [0, 2]}), tmp_path / "p" / "b.parquet")
    x, y, info = load_arrays(cfg(tmp_path / "p", resolution=16))
    assert (info.kind, info.num_rows, info.num_classes) == ("parquet", 4, 4)
    assert y.tolist() == [3, 1, 0, 2] and np.array_equal(x[..., 0], np.stack(imgs))
    # one unnamed binary column is the image column; a Hugging Face Image struct works too
    pq.write_table(pa.table({"pixels_png": enc, "y": [0, 0, 1, 1]}), tmp_path / "anon.parquet")
    x2, y2, _ = load_arrays(cfg(tmp_path / "anon.parquet", resolution=16))
    assert np.array_equal(x2, x) and y2.tolist() == [0, 0, 1, 1]
    hf = pa.table({"img": [{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(enc)]})
    pq.write_table(hf, tmp_path / "hf.parquet")
    x3, y3, _ = load_arrays(cfg(tmp_path / "hf.parquet", resolution=16))
    assert np.array_equal(x3, x) and y3 is None


# --- fingerprints and scaling ---


def test_fingerprint_tracks_content_size_and_channels(tmp_path):
    rng = np.random.default_rng(4)
    root = make_folder(tmp_path / "f", [rand_u8(rng, 8, 8) for _ in range(2)])
    fp = load_arrays(cfg(root, resolution=16))[2].fingerprint
    assert fp == load_arrays(cfg(root, resolution=16))[2].fingerprint
    assert fp != load_arrays(cfg(root, resolution=32))[2].fingerprint
    assert fp != load_arrays(cfg(root, resolution=16, channels=3))[2].fingerprint
    Image.fromarray(rand_u8(rng, 9, 9)).save(root / "000.png")
    os.utime(root / "000.png", ns=(1, 1))
    assert fp != load_arrays(cfg(root, resolution=16))[2].fingerprint


def test_to_float_is_the_documented_scaling():
    u8 = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    f = to_float(u8)
    assert f.shape == (1, 1, 16, 16) and f.dtype == np.float32
    assert f.min() == -1.0 and f.max() == 1.0
    assert np.allclose(f[0, 0], u8[0, :, :, 0] / 127.5 - 1, atol=1e-7)


def test_decode_image_mixed_modes_to_target(tmp_path):
    rgb = np.random.default_rng(5).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    for mode in ("L", "RGB", "RGBA", "P", "1", "CMYK", "LA"):
        img = Image.fromarray(rgb).convert(mode)
        buf = io.BytesIO()
        img.save(buf, format="TIFF" if mode == "CMYK" else "PNG")
        for channels in (1, 3):
            out = decode_image(buf.getvalue(), f"x.{mode}", 16, channels)
            assert out.shape == (16, 16, channels) and out.dtype == np.uint8


# --- real Ray Data pipelines (few, small) ---


def _sorted_rows(u8: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = u8.reshape(len(u8), -1)
    order = np.lexsort(np.concatenate([flat, labels[:, None]], axis=1).T[::-1])
    return u8[order], labels[order]


def _collect(ds) -> tuple[np.ndarray, np.ndarray]:
    """All rows of a load_dataset result back as uint8 NHWC (exact inverse of the scaling)."""
    from ganray.batches import read_split

    image, label = read_split(ds, torch.device("cpu"))  # what a worker reads: CachedRows or Ray Data
    assert image.dtype == torch.float32 and label.dtype == torch.int64
    x = image.numpy()
    assert len(x) == 0 or (x.min() >= -1 and x.max() <= 1)
    u8 = np.rint((x + 1.0) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)
    return u8, label.numpy()


@pytest.mark.ray
def test_ray_mnist_pipeline_matches_load_arrays(ray_session, mnist_dir):
    data = cfg(mnist_dir, resolution=32)
    ds, info = load_dataset(data)
    assert info == load_arrays(data, limit=1)[2]
    assert isinstance(ds, CachedRows)  # in-memory arrays whose floats fit the cache: no Ray Data
    assert info.num_rows == 10_000 and len(ds) == 10_000
    u8, labels = _collect(ds)
    assert u8.shape == (10_000, 32, 32, 1)
    assert np.bincount(labels).tolist() == MNIST_COUNTS
    x, y, _ = load_arrays(data)
    a, b = _sorted_rows(u8, labels), _sorted_rows(x, y)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(labels[:100], y[:100])  # rows are in the seeded permutation, not source order
    # too large to cache as floats: the same rows through Ray Data, streaming
    streaming, _ = load_dataset(data, float_cache_max_bytes=0)
    assert not is_cached(streaming)
    c = _sorted_rows(*_collect(streaming.materialize()))
    assert np.array_equal(c[0], a[0]) and np.array_equal(c[1], a[1])


@pytest.mark.ray
def test_cached_rows_split_and_read_across_block_boundaries(ray_session):
    blocks = [(np.full((n, 1, 2, 2), i, np.float32), np.arange(n) + 10 * i) for i, n in enumerate((3, 5, 2))]
    rows = cache_rows(blocks)
    assert len(rows) == 10 and rows.counts == (3, 5, 2)
    all_labels = np.concatenate([b[1] for b in blocks])
    parts = rows.split(3)  # 3 rows each, the last row left out
    assert [len(p) for p in parts] == [3, 3, 3]
    for i, part in enumerate(parts):
        image, label = part.read()
        assert label.tolist() == all_labels[3 * i : 3 * i + 3].tolist()
        assert image.shape == (3, 1, 2, 2) and image[:, 0, 0, 0].tolist() == [lab // 10 for lab in label]
    assert [p.read()[1].tolist() for p in parts[1].split(2)] == [[10], [11]]  # a split of a split
    assert len(rows.split(20)[0]) == 0 and rows.split(20)[0].read()[0].shape == (0, 1, 2, 2)
    with pytest.raises(ValueError, match="3 images and 2 labels"):
        cache_rows([(np.zeros((3, 1, 2, 2), np.float32), np.zeros(2))])


@pytest.mark.ray
def test_cached_dataset_is_split_between_workers_on_the_driver(ray_session, mnist_dir):
    from collections import Counter

    from ganray.launch import worker_splits

    def rows(ds) -> list[bytes]:
        u8, labels = _collect(ds)
        return [img.tobytes() + bytes([lab]) for img, lab in zip(u8, labels)]

    data = cfg(mnist_dir, resolution=32)
    ds, _ = load_dataset(data)
    splits = worker_splits(ds, 3)
    parts = [rows(s) for s in splits]
    assert [len(p) for p in parts] == [3333] * 3  # equal; one row left over
    # disjoint parts of the dataset (MNIST has duplicate digits: compare as multisets)
    assert not Counter(sum(parts, [])) - Counter(rows(ds))
    # the same rows per rank, in the same order, every time the dataset is loaded and split
    again = [rows(s) for s in worker_splits(load_dataset(data)[0], 3)]
    assert again == parts
    # data too large to cache goes to Ray Train's streaming split instead
    assert worker_splits(load_dataset(data, float_cache_max_bytes=0)[0], 2) is None
    assert worker_splits(load_dataset(data, materialize_max_bytes=0)[0], 2) is None


@pytest.mark.ray
def test_ray_image_folder_and_parquet(ray_session, tmp_path):
    rng = np.random.default_rng(6)
    imgs = {"cat": [rand_u8(rng, 24, 24, 3) for _ in range(3)], "dog": [rand_u8(rng, 12, 20, 3) for _ in range(2)]}
    root = make_folder(tmp_path / "pets", imgs)
    data = cfg(root, resolution=16, channels=3)
    ds, info = load_dataset(data)
    assert (info.kind, info.num_rows, info.num_classes, info.skipped) == ("images", 5, 2, 0)
    u8, labels = _collect(ds)
    x, y, _ = load_arrays(data)
    a, b = _sorted_rows(u8, labels), _sorted_rows(x, y)
    assert np.array_equal(a[0], b[0]) and sorted(labels.tolist()) == [0, 0, 0, 1, 1]
    # decoded files are cached in Ray Data and split on the driver too: equal, disjoint parts
    from ganray.launch import worker_splits

    assert is_cached(ds) and not isinstance(ds, CachedRows)
    parts = [_collect(split) for split in worker_splits(ds, 2)]
    assert [len(p[1]) for p in parts] == [2, 2]
    together = _sorted_rows(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    assert sum(any(np.array_equal(row, r) for r in together[0]) for row in a[0]) == 4

    enc = [png_bytes(a) for a in imgs["cat"] + imgs["dog"]]
    pq.write_table(pa.table({"image": enc, "label": [0, 0, 0, 1, 1]}), tmp_path / "pets.parquet")
    ds2, info2 = load_dataset(cfg("file://" + str(tmp_path / "pets.parquet"), resolution=16, channels=3))
    assert (info2.kind, info2.num_rows, info2.num_classes) == ("parquet", 5, 2)
    u8b, labels_b = _collect(ds2)
    c = _sorted_rows(u8b, labels_b)
    assert np.array_equal(c[0], a[0]) and np.array_equal(c[1], a[1])
