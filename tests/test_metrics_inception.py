"""Loading torch-fidelity's FID Inception-v3 (skipped when torch-fidelity is not installed).

No real weights here: the test saves randomly initialised weights in the state_dict format of
FeatureExtractorInceptionV3, which is what the official weights file holds.
"""

from __future__ import annotations

import urllib.error

import pytest
import torch

from ganray.config import EvalConfig
from ganray.metrics import build_feature_net
from ganray.metrics import inception
from ganray.metrics.features import resolve_kind

pytestmark = pytest.mark.skipif(not inception.is_available(), reason="torch-fidelity is not installed")


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """A weights file with FeatureExtractorInceptionV3's keys and shapes, random values."""
    cls = inception._import_extractor_class()
    folder = tmp_path_factory.mktemp("inception")
    empty = folder / "empty.pth"
    torch.save({}, empty)
    original = cls.load_state_dict
    cls.load_state_dict = lambda self, state_dict, strict=True: None  # keep the random init
    try:
        net = cls("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    finally:
        cls.load_state_dict = original
    path = folder / "weights-inception-random.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No configured weights, an empty torch hub cache, and no network."""
    monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)


def test_inception_features_from_a_weights_file(random_weights, offline):
    net = build_feature_net(EvalConfig(features="inception", inception_weights=str(random_weights)), 32, 1)
    assert (net.name, net.dim) == ("inception", 2048) and net.fingerprint.startswith("incv3-")
    x = torch.rand(2, 1, 32, 32) * 2 - 1  # grey images at the data resolution
    f, logits = net.features_and_logits(x)
    assert f.shape == (2, 2048) and f.dtype == torch.float32 and torch.isfinite(f).all()
    assert logits.shape == (2, inception.NUM_LOGITS)


def test_weights_named_by_environment_variable(random_weights, offline, monkeypatch, tmp_path):
    with pytest.warns(UserWarning, match="evaluation is off"):
        assert resolve_kind(EvalConfig(features="auto", cache_dir=str(tmp_path)), "fp-unlabelled") == "none"
    monkeypatch.setenv(inception.WEIGHTS_ENV, str(random_weights))
    assert inception.local_weights(None) == random_weights
    # Unlabelled data and no cached classifier: auto picks inception once weights are at hand.
    assert resolve_kind(EvalConfig(features="auto", cache_dir=str(tmp_path)), "fp-unlabelled") == "inception"


def test_offline_without_weights_says_how_to_provide_them(offline):
    with pytest.raises(inception.InceptionUnavailable) as err:
        build_feature_net(EvalConfig(features="inception"), 32, 1)
    message = str(err.value)
    assert "eval.inception_weights" in message and inception.WEIGHTS_ENV in message
    assert inception.INCEPTION_URL in message


def test_missing_or_unsafe_weights_files_are_refused(tmp_path, offline):
    with pytest.raises(inception.InceptionUnavailable, match="eval.inception_weights names .* not a file"):
        inception.load_inception(str(tmp_path / "nope.pth"))
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"fn": print}, unsafe)  # a pickled callable: never unpickled with weights_only=False
    with pytest.raises(inception.InceptionUnavailable, match="not a weights-only state_dict"):
        inception.load_inception(str(unsafe))
