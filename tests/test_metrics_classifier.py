"""ganray's evaluation classifier: fit, safetensors file with metadata, FeatureNet, caching."""

from __future__ import annotations

import gzip
import warnings

import numpy as np
import pytest
import torch

from ganray.config import EvalConfig
from ganray.metrics import build_feature_net
from ganray.metrics import classifier as clf
from ganray.metrics.realdata import RealData


def mnist_subset(mnist_dir, n: int, resolution: int = 32) -> RealData:
    """The first n MNIST test images, zero-padded 28 -> 32 px (black background), uint8."""
    with gzip.open(mnist_dir / "t10k-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)[:n]
    with gzip.open(mnist_dir / "t10k-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)[:n]
    pad = (resolution - 28) // 2
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    return RealData(x, y.astype(np.int64), f"mnist-first-{n}", 10)


def test_fit_save_load_and_features(mnist_dir, tmp_path):
    real = mnist_subset(mnist_dir, 1000)
    net, meta = clf.fit_classifier(real.images(), real.label_tensor(), dataset_fingerprint=real.fingerprint, epochs=2,
                                   heldout=200, batch_size=16)
    assert meta.accuracy > 0.5  # chance is 0.1; ~0.8 measured after these 100 steps
    assert (meta.num_classes, meta.resolution, meta.channels, meta.heldout_images) == (10, 32, 1, 200)
    path = clf.save_classifier(tmp_path / "clf.safetensors", net, meta)

    loaded, meta2, fingerprint = clf.load_classifier(path)
    assert meta2 == meta and fingerprint.startswith("clf-")
    x = real.images(np.arange(16))
    torch.testing.assert_close(loaded(x), net(x))

    cfg = EvalConfig(features="classifier", classifier_path=str(path))
    fnet = build_feature_net(cfg, 32, 1, real.fingerprint)
    f, logits = fnet.features_and_logits(x)
    assert (fnet.name, fnet.dim, fnet.fingerprint) == ("classifier", 128, fingerprint)
    assert f.shape == (16, 128) and logits.shape == (16, 10)
    torch.testing.assert_close(fnet.features(x), f)
    with pytest.raises(ValueError, match="trained at 32 x 32 px"):
        fnet.features(torch.zeros(2, 1, 16, 16))
    with pytest.raises(clf.ClassifierError, match="trained on 1 x 32 x 32 images; the data is 3 x 32 x 32"):
        build_feature_net(cfg, 32, 3, real.fingerprint)
    with pytest.warns(UserWarning, match="trained on dataset mnist-first-1000"):
        build_feature_net(cfg, 32, 1, "another-dataset")


def test_load_refuses_files_that_are_not_ganray_classifiers(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(clf.ClassifierError, match="not a ganray classifier"):
        clf.load_classifier(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(clf.ClassifierError, match="cannot read classifier"):
        clf.load_classifier(tmp_path / "junk.safetensors")
    with pytest.raises(clf.ClassifierError, match="ganray evaluator fit"):
        clf.load_classifier(tmp_path / "missing.safetensors")


def test_auto_trains_on_first_use_then_reuses_the_cached_file(mnist_dir, tmp_path):
    real = mnist_subset(mnist_dir, 300)
    cfg = EvalConfig(features="auto", cache_dir=str(tmp_path))
    logs = []
    fnet = build_feature_net(cfg, 32, 1, labelled=real, log=logs.append)
    assert fnet.name == "classifier" and any("training the evaluation classifier" in m for m in logs)
    cached = clf.default_classifier_path(tmp_path, real.fingerprint)
    assert cached.is_file()
    again = build_feature_net(cfg, 32, 1, real.fingerprint, log=logs.append)  # no data needed now
    assert again.fingerprint == fnet.fingerprint
    with pytest.raises(clf.ClassifierError, match="ganray evaluator fit --data SOURCE"):
        build_feature_net(EvalConfig(features="classifier", cache_dir=str(tmp_path)), 32, 1, "unseen")


def test_auto_without_labels_or_weights_is_none_with_warning(tmp_path, monkeypatch):
    monkeypatch.delenv("GANRAY_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    unlabelled = RealData(np.zeros((4, 16, 16, 1), np.uint8), None, "fp-unlabelled")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert build_feature_net(EvalConfig(cache_dir=str(tmp_path)), 16, 1, labelled=unlabelled) is None
    assert any("evaluation is off" in str(w.message) for w in caught)
    assert build_feature_net(EvalConfig(features="none"), 16, 1) is None
