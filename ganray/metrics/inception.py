"""The standard FID Inception-v3, from the optional extra torch-fidelity (not re-implemented).

torch-fidelity's package __init__ imports torchvision (for its CLIP and dataset helpers), which
cannot be installed beside every torch build. The Inception module itself needs only torch, so
when the normal import fails we register a bare `torch_fidelity` package (its __init__ not run)
and import `torch_fidelity.feature_extractor_inceptionv3` from it.

Weights: a local file named by eval.inception_weights or $GANRAY_INCEPTION_WEIGHTS, else torch
hub's cache, else torch-fidelity's download (online only).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path

import torch

INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
WEIGHTS_ENV = "GANRAY_INCEPTION_WEIGHTS"
FEATURE_DIM = 2048
NUM_LOGITS = 1008  # the TF graph's ImageNet head (1000 classes + 8 unused)
INSTALL_HINT = "pip install --no-deps torch-fidelity==0.4.0 tqdm  (or: pip install 'ganray[inception]' where torchvision installs)"


class InceptionUnavailable(RuntimeError):
    """torch-fidelity or the Inception weights cannot be found; the message says how to fix it."""


def _import_extractor_class():
    name = "torch_fidelity.feature_extractor_inceptionv3"
    try:
        return importlib.import_module(name).FeatureExtractorInceptionV3
    except ImportError as e:
        first_error = e
    spec = importlib.util.find_spec("torch_fidelity") if "torch_fidelity" not in sys.modules else None
    if spec is None or not spec.submodule_search_locations:
        raise InceptionUnavailable(
            f"eval.features=inception needs torch-fidelity ({first_error}); install it with: {INSTALL_HINT}"
        ) from None
    # The failed package import left no `torch_fidelity` in sys.modules; a bare package with the
    # right search path lets the submodule import without running the package's __init__.
    package = types.ModuleType("torch_fidelity")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules["torch_fidelity"] = package
    try:
        return importlib.import_module(name).FeatureExtractorInceptionV3
    except ImportError as e:
        del sys.modules["torch_fidelity"]
        raise InceptionUnavailable(f"cannot import {name}: {e}; install torch-fidelity with: {INSTALL_HINT}") from None


def is_available() -> bool:
    """True when torch-fidelity imports (with or without its package __init__)."""
    try:
        _import_extractor_class()
    except InceptionUnavailable:
        return False
    return True


def hub_cache_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_URL.rsplit("/", 1)[1]


def local_weights(configured: str | None) -> Path | None:
    """The weights file named by config or env (must exist), else the hub cache if present."""
    for source, value in (("eval.inception_weights", configured), (WEIGHTS_ENV, os.environ.get(WEIGHTS_ENV))):
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise InceptionUnavailable(f"{source} names {str(path)!r}, which is not a file")
            return path
    cached = hub_cache_path()
    return cached if cached.is_file() else None


def _download() -> Path:
    try:
        torch.hub.load_state_dict_from_url(INCEPTION_URL, progress=False, map_location="cpu", weights_only=True)
    except Exception as e:  # URLError, HTTPError, OSError, a partial file: all mean "not here"
        raise InceptionUnavailable(
            f"the FID Inception-v3 weights are not available offline ({type(e).__name__}: {e}). Download "
            f"{INCEPTION_URL} on a machine with internet access and name the file with eval.inception_weights "
            f"(--set eval.inception_weights=PATH) or the environment variable {WEIGHTS_ENV}, or place it at "
            f"{hub_cache_path()}"
        ) from None
    return hub_cache_path()


def load_inception(weights: str | None = None, device: str | torch.device = "cpu"):
    """(FeatureExtractorInceptionV3 returning (2048-d pool features, 1008 logits), fingerprint, weights path)."""
    cls = _import_extractor_class()
    path = local_weights(weights) or _download()
    try:  # torch-fidelity unpickles weights without restriction; refuse anything but plain tensors first.
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InceptionUnavailable(f"Inception weights {path} are not a weights-only state_dict: {e}") from None
    try:
        net = cls("inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path))
    except RuntimeError as e:  # missing or mis-shaped keys
        raise InceptionUnavailable(f"Inception weights {path} do not fit FeatureExtractorInceptionV3: {e}") from None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return net.to(device).eval(), f"incv3-{digest}", path


def to_uint8_rgb(x: torch.Tensor) -> torch.Tensor:
    """float N x C x H x W in [-1, 1] (C = 1 or 3) -> uint8 N x 3 x H x W, as the extractor expects."""
    u8 = ((x.float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
    return u8.expand(-1, 3, -1, -1) if u8.shape[1] == 1 else u8
