"""Pixels: decode encoded images and bring any image or array to uint8 H x W x C at the target size.

`fit` is the single place where pixels change (mode, crop, resize), so `load_dataset` (inside
Ray Data) and `load_arrays` (on the caller) give identical pixels for every source. The batch
functions at the bottom are the Ray Data `map_batches` UDFs.

Choices, documented once:
- 16-bit greyscale is scaled v * 255 / 65535 (Pillow's own convert("L") clips at 255 instead);
  32-bit float images are rejected as ambiguous.
- Palette images are expanded; transparent pixels are composited over white (the usual
  background of icons and sprites).
- Non-square images are centre-cropped to a square, then resized with bicubic filtering
  (Pillow antialiases when downscaling).
- Pillow's MAX_IMAGE_PIXELS guard stays on, and its DecompressionBombWarning (1-2x the limit)
  is an error too.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from ganray.data.core import DataError

RESAMPLE = Image.Resampling.BICUBIC
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ARRAY_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def _normalise_mode(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> "L" or "RGB" with 8-bit samples."""
    if img.mode in _SIXTEEN_BIT_MODES:
        v = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        return Image.fromarray(((v * 255 + 32767) // 65535).astype(np.uint8))  # round(v / 257)
    if img.mode == "F":
        raise ValueError("32-bit float pixels have no agreed range; save the image as 8- or 16-bit")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "RGBa", "La"):
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img.convert("RGBA")).convert("RGB")
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")  # 1, CMYK, YCbCr, ...
    return img


def fit(img: Image.Image, resolution: int, channels: int) -> np.ndarray:
    """Pillow image -> uint8 resolution x resolution x channels (centre crop, bicubic resize)."""
    img = _normalise_mode(img).convert("L" if channels == 1 else "RGB")
    w, h = img.size
    if (w, h) != (resolution, resolution):
        s = min(w, h)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        img = img.resize((resolution, resolution), RESAMPLE, box=box)
    a = np.asarray(img, dtype=np.uint8)
    return a[:, :, None] if a.ndim == 2 else a


def decode_image(data: bytes | None, name: str, resolution: int, channels: int) -> np.ndarray:
    """Encoded image bytes -> uint8 resolution x resolution x channels; DataError names `name`."""
    if not data:
        raise DataError(f"{name}: empty file (0 bytes), not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                limit = Image.MAX_IMAGE_PIXELS
                if limit and img.width * img.height > limit:
                    raise Image.DecompressionBombError(
                        f"{img.width}x{img.height} pixels exceeds Pillow's limit of {limit}"
                    )
                if img.format == "JPEG":  # let libjpeg decode at a reduced scale (still >= target)
                    img.draft(img.mode, (resolution, resolution))
                img.load()
                return fit(img, resolution, channels)
    except Image.UnidentifiedImageError:
        raise DataError(
            f"{name}: not a readable image: unknown format or damaged header (expected png, jpg, jpeg, webp or bmp)"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{name}: refused as a possible decompression bomb ({e})") from None
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ...
        raise DataError(f"{name}: cannot decode image: {e}") from None


def array_mode(x: np.ndarray, what: str) -> np.ndarray:
    """uint8 N x H x W or N x H x W x C (C = 1..4: L, LA, RGB, RGBA) -> N x H x W x C."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(f"{what}: expected shape (N, H, W) or (N, H, W, C), got {x.shape}")
    if x.shape[-1] not in _ARRAY_MODES:
        hint = " (channels-first? transpose to N x H x W x C)" if x.shape[1] in _ARRAY_MODES else ""
        raise DataError(
            f"{what}: {x.shape[-1]} channels cannot be converted; expected 1 (grey), 2 (grey+alpha), "
            f"3 (RGB) or 4 (RGBA) in the last axis of shape {x.shape}{hint}"
        )
    return x


def fit_array(x: np.ndarray, resolution: int, channels: int) -> np.ndarray:
    """uint8 N x H x W x C -> uint8 N x resolution x resolution x channels, via `fit` per image."""
    n, h, w, c = x.shape
    if (h, w, c) == (resolution, resolution, channels):
        return x
    out = np.empty((n, resolution, resolution, channels), np.uint8)
    for i in range(n):
        out[i] = fit(Image.fromarray(x[i, :, :, 0] if c == 1 else x[i]), resolution, channels)
    return out


def to_float(u8: np.ndarray) -> np.ndarray:
    """uint8 N x H x W x C -> float32 N x C x H x W in [-1, 1]: x = u8 / 127.5 - 1."""
    x = u8.astype(np.float32).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x / np.float32(127.5) - np.float32(1.0))


# --- Ray Data map_batches UDFs (numpy batches); decoders record errors instead of raising,
# so the driver can report every bad file by name, or count them with skip_bad_images ---


def _decoded(images: list[np.ndarray], labels, errors: list[str], resolution: int, channels: int):
    image = np.stack(images) if images else np.zeros((0, resolution, resolution, channels), np.uint8)
    return {"image": image, "label": np.asarray(labels, np.int64), "error": np.asarray(errors, dtype=object)}


def _decode_rows(datas, names, labels, resolution: int, channels: int):
    images, errors = [], []
    blank = np.zeros((resolution, resolution, channels), np.uint8)
    for data, name in zip(datas, names):
        try:
            images.append(decode_image(data, name, resolution, channels))
            errors.append("")
        except DataError as e:
            images.append(blank)
            errors.append(str(e))
    return _decoded(images, labels, errors, resolution, channels)


def decode_files_batch(batch: dict, root: str, class_index: dict, resolution: int, channels: int) -> dict:
    """{"bytes", "path"} from read_binary_files -> {"image" u8 NHWC, "label", "error"}.

    The label is the index of the first folder under `root` (-1 when `class_index` is empty).
    """
    prefix = root.rstrip("/") + "/"
    names = [str(p) for p in batch["path"]]
    rels = [n[len(prefix) :] if n.startswith(prefix) else n for n in names]
    labels = [class_index[r.split("/")[0]] if class_index else -1 for r in rels]
    return _decode_rows(batch["bytes"], names, labels, resolution, channels)


def decode_parquet_batch(
    batch: dict, image_column: str, label_column: str | None, resolution: int, channels: int
) -> dict:
    """Parquet rows (encoded bytes, or Hugging Face {"bytes", "path"} structs) -> decoded rows."""
    datas, names = [], []
    files = batch.get("path", [None] * len(batch[image_column]))
    for value, file in zip(batch[image_column], files):
        inner = value.get("path") if isinstance(value, dict) else None
        datas.append(value.get("bytes") if isinstance(value, dict) else value)
        names.append(f"{file}: column {image_column!r}" + (f" (image {inner})" if inner else ""))
    n = len(datas)
    labels = batch[label_column] if label_column else np.full(n, -1)
    return _decode_rows(datas, names, labels, resolution, channels)


def fit_batch(batch: dict, resolution: int, channels: int) -> dict:
    """In-memory sources: {"image" u8 N x h x w x c, "label"} -> images at the target size."""
    image = fit_array(batch["image"], resolution, channels)
    return {"image": image, "label": batch["label"].astype(np.int64), "error": np.full(len(image), "", object)}


def to_model_batch(batch: dict, skip_bad_images: bool) -> dict:
    """Decoded rows -> the training columns: "image" float32 N x C x H x W in [-1, 1], "label" int64."""
    image, label = batch["image"], batch["label"]
    errors = np.asarray(batch["error"], dtype=object)
    bad = errors != ""
    if bad.any():
        if not skip_bad_images:
            raise DataError(f"{errors[bad][0]} (set data.skip_bad_images=true to skip bad images)")
        image, label = image[~bad], label[~bad]
    return {"image": to_float(image), "label": label.astype(np.int64)}
