"""The evaluation cache's files, read without torch: the classifier's safetensors header and
fingerprint, and the real-statistics .npz.

The driver of a run whose classifier and real statistics are cached (every run after the
first on a dataset) only checks these files and ships their contents to the workers; reading
them here, with numpy and json, keeps torch out of the driver (`metrics.training.prepare_eval`).
`classifier.py` and `stats.py` build their torch objects on top of these functions, so the
formats are defined once.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

CLASSIFIER_FORMAT = "ganray-classifier-v1"
STATS_FORMAT = "ganray-feature-stats-v1"


class ClassifierError(ValueError):
    """A classifier file is missing, unreadable or does not fit the data."""


class StatsCacheError(ValueError):
    """A cached statistics file is unreadable or was computed for something else."""


def cache_dir(eval_cfg=None) -> Path:
    """eval.cache_dir, else $GANRAY_CACHE, else ~/.cache/ganray."""
    configured = getattr(eval_cfg, "cache_dir", None) if eval_cfg is not None else None
    return Path(configured or os.environ.get("GANRAY_CACHE") or "~/.cache/ganray").expanduser()


def default_classifier_path(cache_dir: str | Path, dataset_fingerprint: str) -> Path:
    return Path(cache_dir) / f"classifier_{dataset_fingerprint}.safetensors"


def classifier_fingerprint(data: bytes) -> str:
    """The identity of a classifier file's bytes; cached real statistics are keyed on it."""
    return "clf-" + hashlib.sha256(data).hexdigest()[:16]


def classifier_meta(data: bytes, name: str = "<bytes>") -> dict[str, Any]:
    """The ClassifierMeta fields stored in a classifier file's safetensors header."""
    try:
        # safetensors layout: 8-byte little-endian header length, then a JSON header.
        size = int.from_bytes(data[:8], "little")
        if len(data) < 8 or size > len(data) - 8:
            raise ValueError("truncated header")
        header = json.loads(data[8 : 8 + size])
    except (ValueError, UnicodeDecodeError) as e:
        raise ClassifierError(f"cannot read classifier {name}: {e}") from None
    metadata = (header.get("__metadata__") or {}) if isinstance(header, dict) else {}
    if metadata.get("format") != CLASSIFIER_FORMAT:
        raise ClassifierError(f"{name} is not a ganray classifier (metadata format {metadata.get('format')!r})")
    try:
        return dict(json.loads(metadata["meta"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ClassifierError(f"cannot read classifier {name}'s metadata: {e}") from None


@dataclass(frozen=True)
class StatsKey:
    """What a real-data statistic depends on; stored in the file and compared on load."""

    dataset: str  # dataset fingerprint
    network: str  # feature network fingerprint (identity of its weights)
    resolution: int
    num_samples: int

    def filename(self) -> str:
        return f"stats_{self.dataset}_{self.network}_{self.resolution}px_{self.num_samples}.npz"


def read_stats(path: str | Path, key: StatsKey) -> tuple[np.ndarray, np.ndarray, int, np.ndarray | None]:
    """(mu, cov, count, raw features or None) from `path`, refusing a file whose key differs."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if "format" not in z.files or str(z["format"]) != STATS_FORMAT:
                raise StatsCacheError(f"{path} is not a ganray feature-statistics file")
            stored = json.loads(str(z["key"]))
            mu, cov, count = z["mu"], z["cov"], int(z["count"])
            features = z["features"] if "features" in z.files else None
    except StatsCacheError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise StatsCacheError(f"cannot read cached statistics {path}: {type(e).__name__}: {e}") from None
    expected = asdict(key)
    wrong = [f"{k}: file has {stored.get(k)!r}, expected {v!r}" for k, v in expected.items() if stored.get(k) != v]
    if wrong:
        raise StatsCacheError(
            f"refusing cached statistics {path}: computed for different inputs ({'; '.join(wrong)}); "
            "delete the file or point eval.cache_dir elsewhere"
        )
    return mu, cov, count, features
