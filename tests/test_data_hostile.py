"""Hostile input: every case gives a DataError whose message names the culprit, or a counted skip.

All data is built in tmp_path. Only the last tests start Ray work (one tiny folder each).
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ganray.config import DataConfig
from ganray.data import DataError, load_arrays, load_dataset
from ganray.data.decode import decode_image


def cfg(source, **kw) -> DataConfig:
    return DataConfig(source=str(source), resolution=16, **kw)


def encode(a: np.ndarray | Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    (a if isinstance(a, Image.Image) else Image.fromarray(a)).save(buf, format=fmt)
    return buf.getvalue()


def good(seed: int = 0) -> bytes:
    return encode(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8))


def folder(tmp_path, files: dict[str, bytes]):
    root = tmp_path / "imgs"
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def png_with_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims width x height (a decompression bomb's calling card)."""
    b = bytearray(encode(Image.new("1", (1, 1))))
    b[16:24] = struct.pack(">II", width, height)  # IHDR data starts at byte 16
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))  # IHDR CRC over type + data
    return bytes(b)


# --- broken image files ---

BAD_IMAGES = {
    "zero.png": (b"", "empty file"),
    "trunc.png": (good()[:60], "truncated|damaged header"),
    "trunc.jpg": (encode(np.zeros((64, 64, 3), np.uint8) + 90, "JPEG")[:300], "Truncated|truncated"),
    "text.png": (b"this is a text file, not a picture\n" * 4, "not a readable image"),
    "bomb.png": (png_with_size(10_000, 10_000), "decompression bomb"),  # 1-2x limit: Pillow only warns
    "bigbomb.png": (png_with_size(20_000, 20_000), "decompression bomb"),  # > 2x: Pillow raises
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_image_is_named_or_skipped(tmp_path, name):
    data, reason = BAD_IMAGES[name]
    root = folder(tmp_path, {"a.png": good(1), name: data, "b.png": good(2)})
    with pytest.raises(DataError, match=rf"1 of 3 images cannot be decoded.*{name}: .*({reason})"):
        load_arrays(cfg(root))
    x, _, info = load_arrays(cfg(root, skip_bad_images=True))
    assert len(x) == 2 and info.skipped == 1 and info.num_rows == 2


def test_bomb_warning_is_an_error_even_where_warnings_are_ignored():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="decompression bomb"):
            decode_image(png_with_size(10_000, 10_000), "w.png", 16, 1)
    assert Image.MAX_IMAGE_PIXELS is not None  # Pillow's guard stays on


def test_all_images_bad_is_an_error_even_when_skipping(tmp_path):
    root = folder(tmp_path, {"a.png": b"", "b.jpg": b"nope"})
    with pytest.raises(DataError, match="none of the 2 images"):
        load_arrays(cfg(root, skip_bad_images=True))


def test_file_vanishing_before_read_is_named(tmp_path, monkeypatch):
    from ganray.data import pipeline

    root = folder(tmp_path, {"a.png": good(1), "gone.png": good(2)})
    stale = pipeline.prepare(str(root), None)
    (root / "gone.png").unlink()
    monkeypatch.setattr(pipeline, "prepare", lambda *args: stale)
    with pytest.raises(DataError, match=r"cannot read '.*gone\.png'"):
        load_arrays(cfg(root))
    assert load_arrays(cfg(root, skip_bad_images=True))[2].skipped == 1


# --- odd but valid images are converted ---


def _png_16bit(values: np.ndarray, rgb: bool) -> bytes:
    """Hand-written 16-bit PNG (colour type 0 grey or 2 RGB), big-endian samples, filter 0."""
    h, w = values.shape[:2]
    rows = b"".join(b"\0" + values[r].astype(">u2").tobytes() for r in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2 if rgb else 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_16bit_grey_and_rgb_scale_to_8bit():
    v = np.array([0, 1000, 32768, 65535], np.uint16)
    grey = np.tile(v, (4, 1))  # 4 x 4, each column one value
    out = decode_image(_png_16bit(grey, rgb=False), "g16.png", 4, 1)
    assert out[0, :, 0].tolist() == [0, 4, 128, 255]  # round(v / 257); Pillow alone would clip to 255
    rgb = np.stack([grey, grey[:, ::-1], np.full_like(grey, 65535)], axis=-1)
    out = decode_image(_png_16bit(rgb, rgb=True), "c16.png", 4, 3)
    assert out[0, :, 0].tolist() == [0, 3, 128, 255]  # Pillow keeps the high byte of 16-bit RGB: v // 256
    assert out[0, :, 1].tolist()[::-1] == out[0, :, 0].tolist() and (out[..., 2] == 255).all()


def test_palette_and_transparency():
    pal = Image.new("P", (4, 4))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putdata([0] * 8 + [1] * 8)  # top half red, bottom half blue
    rgb = decode_image(encode(pal), "p.png", 4, 3)
    assert rgb[0, 0].tolist() == [255, 0, 0] and rgb[3, 0].tolist() == [0, 0, 255]
    assert decode_image(encode(pal), "p.png", 4, 1)[0, 0, 0] == 76  # luma of pure red
    pal.info["transparency"] = 1  # blue is transparent -> composited over white
    see_through = decode_image(encode(pal), "t.png", 4, 3)
    assert see_through[3, 0].tolist() == [255, 255, 255] and see_through[0, 0].tolist() == [255, 0, 0]
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent black -> white
    assert (decode_image(encode(rgba), "a.png", 4, 1) == 255).all()


def test_mixed_sizes_and_modes_in_one_folder(tmp_path):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (40, 24, 3), dtype=np.uint8)
    files = {
        "l.png": encode(Image.fromarray(rgb).convert("L")),
        "rgb.jpg": encode(rgb, "JPEG"),
        "rgba.png": encode(Image.fromarray(rgb).convert("RGBA")),
        "p.bmp": encode(Image.fromarray(rgb).convert("P"), "BMP"),
        "one.png": encode(Image.fromarray(rgb).convert("1")),
        "big.webp": encode(rng.integers(0, 256, (100, 70, 3), dtype=np.uint8), "WEBP"),
        "tiny.png": encode(rng.integers(0, 256, (3, 5), dtype=np.uint8)),
        "g16.png": _png_16bit(rng.integers(0, 65536, (9, 9), dtype=np.uint16), rgb=False),
    }
    root = folder(tmp_path, files)
    for channels in (1, 3):
        x, y, info = load_arrays(cfg(root, channels=channels))
        assert x.shape == (len(files), 16, 16, channels) and y is None and info.skipped == 0


def test_float_image_is_rejected_with_reason():
    f = Image.fromarray(np.full((4, 4), 0.5, np.float32))
    with pytest.raises(DataError, match="f.tif: .*float"):
        decode_image(encode(f, "TIFF"), "f.tif", 4, 1)


# --- folders and paths ---


def test_empty_folder_missing_path_and_no_images(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty folder"):
        load_arrays(cfg(tmp_path / "empty"))
    with pytest.raises(DataError, match="does not exist"):
        load_arrays(cfg(tmp_path / "missing"))
    with pytest.raises(DataError, match="does not exist"):
        load_arrays(cfg("file://" + str(tmp_path / "missing")))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="no supported files"):
        load_arrays(cfg(tmp_path / "docs"))
    (tmp_path / "one.png").write_bytes(good())
    with pytest.raises(DataError, match="point data.source at the folder"):
        load_arrays(cfg(tmp_path / "one.png"))


def test_images_both_loose_and_in_class_folders(tmp_path):
    root = folder(tmp_path, {"loose.png": good(), "cat/a.png": good(1)})
    with pytest.raises(DataError, match="both directly in the folder"):
        load_arrays(cfg(root))


# --- Parquet ---


def test_parquet_schemas_that_disagree_or_lack_images(tmp_path):
    (tmp_path / "p").mkdir()
    pq.write_table(pa.table({"image": [good()], "label": [0]}), tmp_path / "p" / "a.parquet")
    pq.write_table(pa.table({"image": ["not bytes"], "label": [1]}), tmp_path / "p" / "b.parquet")
    with pytest.raises(DataError, match=r"b\.parquet' disagrees with .*a\.parquet.*'image' should be binary"):
        load_arrays(cfg(tmp_path / "p"))
    pq.write_table(pa.table({"image": [good()]}), tmp_path / "p" / "b.parquet")
    with pytest.raises(DataError, match=r"b\.parquet' .* lacks the integer label column 'label'"):
        load_arrays(cfg(tmp_path / "p"))
    pq.write_table(pa.table({"name": ["x"], "label": [0]}), tmp_path / "none.parquet")
    with pytest.raises(DataError, match=r"none\.parquet' has no image column.*name: string"):
        load_arrays(cfg(tmp_path / "none.parquet"))
    pq.write_table(pa.table({"image": [good()], "label": [0.5]}), tmp_path / "flt.parquet")
    with pytest.raises(DataError, match="label column 'label' has type double"):
        load_arrays(cfg(tmp_path / "flt.parquet"))
    pq.write_table(pa.table({"a": [good()], "b": [good()]}), tmp_path / "two.parquet")
    with pytest.raises(DataError, match="several binary columns"):
        load_arrays(cfg(tmp_path / "two.parquet"))
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(DataError, match=r"junk\.parquet' cannot be read"):
        load_arrays(cfg(tmp_path / "junk.parquet"))


def test_parquet_bad_image_row_names_the_file(tmp_path):
    pq.write_table(pa.table({"image": [good(), b"\x89PNG broken"]}), tmp_path / "rows.parquet")
    with pytest.raises(DataError, match=r"rows\.parquet: column 'image'"):
        load_arrays(cfg(tmp_path / "rows.parquet"))
    assert load_arrays(cfg(tmp_path / "rows.parquet", skip_bad_images=True))[2].skipped == 1


# --- IDX ---


def _idx(magic: int, dims: list[int], body: bytes) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + body


def test_idx_wrong_magic_truncated_and_bad_gzip(tmp_path):
    name = "train-images-idx3-ubyte"
    cases = {
        "magic number 2049; expected 2051": _idx(2049, [2, 4, 4], bytes(32)),
        "is truncated: header says 2 x 4 x 4 = 32 bytes, body has 20": _idx(2051, [2, 4, 4], bytes(20)),
        "truncated inside its header": _idx(2051, [2, 4, 4], b"")[:9],
    }
    for message, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=rf"{name}' .*{message}"):
            load_arrays(cfg(tmp_path))
    (tmp_path / name).unlink()
    (tmp_path / f"{name}.gz").write_bytes(gzip.compress(_idx(2051, [2, 4, 4], bytes(32)))[:-6])
    with pytest.raises(DataError, match=rf"{name}\.gz' is not valid gzip"):
        load_arrays(cfg(tmp_path))


def test_idx_label_problems(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx(2051, [3, 4, 4], bytes(48)))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx(2051, [2], bytes(2)))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte' has magic number 2051; expected 2049"):
        load_arrays(cfg(tmp_path))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx(2049, [2], bytes(2)))
    with pytest.raises(DataError, match="has 2 labels for 3 images"):
        load_arrays(cfg(tmp_path))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx(2049, [3], bytes([0, 1, 9])))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx(2051, [1, 4, 4], bytes(16)))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte is missing"):
        load_arrays(cfg(tmp_path))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx(2049, [1], bytes([12])))
    with pytest.raises(DataError, match=r"1 labels outside \[0, 10\).*\[12\]"):
        load_arrays(cfg(tmp_path, num_classes=10))
    x, y, info = load_arrays(cfg(tmp_path))
    assert len(x) == 4 and y.tolist() == [0, 1, 9, 12] and info.num_classes == 13


# --- npz ---


def test_npz_bad_arrays(tmp_path):
    def check(message: str, **arrays):
        np.savez(tmp_path / "d.npz", **arrays)
        with pytest.raises(DataError, match=message):
            load_arrays(cfg(tmp_path / "d.npz"))

    x = np.zeros((2, 8, 8), np.uint8)
    nan = np.full((2, 8, 8), np.nan, np.float32)
    check("array 'x' .float32. contains NaN", x=nan)
    check("array 'x' has dtype float64; ganray needs uint8", x=np.full((2, 8, 8), 0.5))
    check("has values -1..300; expected 0..255", x=np.array([[[-1, 300]]], np.int16))
    check("5 channels cannot be converted", x=np.zeros((2, 8, 8, 5), np.uint8))
    check("channels-first", x=np.zeros((2, 3, 8, 8), np.uint8))
    check("has no array 'x'.*'images'", images=x)
    check(r"'y' has shape \(3,\); expected \(2,\)", x=x, y=np.arange(3))
    check("'y' has dtype float64", x=x, y=np.array([0.0, 1.0]))
    check("negative labels", x=x, y=np.array([0, -1]))
    check("holds no images", x=np.zeros((0, 8, 8), np.uint8))
    check("expected shape .N, H, W.", x=np.zeros((8, 8), np.uint8))
    (tmp_path / "d.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="is not a readable .npz"):
        load_arrays(cfg(tmp_path / "d.npz"))
    np.savez(tmp_path / "o.npz", x=np.array([object()], dtype=object))
    with pytest.raises(DataError, match="o.npz"):
        load_arrays(cfg(tmp_path / "o.npz"))


def test_labels_out_of_range_and_missing_labels(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 8, 8), np.uint8), y=np.array([0, 5, 7]))
    with pytest.raises(DataError, match=r"2 labels outside \[0, 5\) .data.num_classes=5., e.g. \[5, 7\]"):
        load_arrays(cfg(tmp_path / "d.npz", num_classes=5))
    np.savez(tmp_path / "u.npz", x=np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(DataError, match="data.num_classes=3 is set, but .* has no labels"):
        load_arrays(cfg(tmp_path / "u.npz", num_classes=3))
    root = folder(tmp_path, {"a/1.png": good(), "b/1.png": good(), "c/1.png": good()})
    with pytest.raises(DataError, match="has 3 class folders but data.num_classes=2"):
        load_arrays(cfg(root, num_classes=2))


# --- through Ray: errors surface before training, skips are counted ---


@pytest.mark.ray
def test_ray_bad_image_fails_at_load_or_is_counted(ray_session, tmp_path, monkeypatch):
    root = folder(tmp_path, {"a.png": good(1), "broken.jpg": b"\xff\xd8\xff garbage", "b.png": good(2)})
    with pytest.raises(DataError, match=r"1 of 3 images cannot be decoded.*broken\.jpg"):
        load_dataset(cfg(root))
    ds, info = load_dataset(cfg(root, skip_bad_images=True))
    assert (info.num_rows, info.skipped) == (2, 1) and ds.count() == 2
    # too big to cache decoded: streams; a few files are probed on the caller first ...
    with pytest.raises(DataError, match=r"broken\.jpg"):
        load_dataset(cfg(root), materialize_max_bytes=0)
    # ... and a bad file the probe missed surfaces while iterating, by name
    monkeypatch.setattr("ganray.data.pipeline.PROBE_FILES", 0)
    ds, info = load_dataset(cfg(root), materialize_max_bytes=0)
    with pytest.raises(Exception) as err:  # Ray wraps the worker's DataError; its text is kept
        ds.take_all()
    assert "DataError" in str(err.value) and "broken.jpg" in str(err.value)
    ds, _ = load_dataset(cfg(root, skip_bad_images=True), materialize_max_bytes=0)
    assert len(ds.take_all()) == 2
    # a file that vanishes between the listing and the read
    from ganray.data import pipeline

    stale = pipeline.prepare(str(root), None)
    (root / "b.png").unlink()
    monkeypatch.setattr(pipeline, "prepare", lambda *args: stale)
    with pytest.raises(DataError, match=r"reading data.source .* failed: .*b\.png"):
        load_dataset(cfg(root, skip_bad_images=True))

