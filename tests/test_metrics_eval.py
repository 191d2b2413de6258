"""evaluate_generator / evaluate_images at world size 1 (the 2-worker case is in test_metrics_dist)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ganray.metrics import FeatureStats, all_gather_cat, evaluate_generator, evaluate_images, real_stats
from ganray.metrics.classifier import Classifier
from ganray.metrics.evaluate import NOISE_BLOCK, _noise
from ganray.metrics.features import FeatureNet
from ganray.metrics.realdata import RealData

R, LATENT, K = 8, 6, 4


class TinyG(nn.Module):
    """z (N x LATENT) [+ labels] -> N x 1 x R x R in [-1, 1]; records the labels it was given."""

    def __init__(self, conditional: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(LATENT, R * R)
        self.embed = nn.Embedding(K, R * R) if conditional else None
        self.seen_labels, self.modes_seen = [], []

    def forward(self, z, labels=None):
        self.modes_seen.append(self.training)
        h = self.fc(z)
        if self.embed is not None:
            self.seen_labels.append(labels.clone())
            h = h + self.embed(labels)
        return torch.tanh(h).view(-1, 1, R, R)


def toy_net() -> FeatureNet:
    torch.manual_seed(1)
    net = Classifier(1, K, width=4, feature_dim=8).eval()

    def forward(x):
        f = net.features(x)
        return f, net.head(f)

    return FeatureNet("classifier", 8, "toy-net", forward, net, R, 1, K)


@pytest.fixture(scope="module")
def real():
    data = RealData(np.random.default_rng(2).integers(0, 256, (600, R, R, 1), dtype=np.uint8), None, "fp-toy")
    stats, features = real_stats(toy_net(), data, num_samples=600)
    return data, stats, features


ALL = ("fid", "kid", "is", "pr")


def _evaluate(G, real, **kw):
    _, stats, features = real
    args = dict(num_samples=200, batch_size=64, latent_dim=LATENT, device="cpu", seed=5, metrics=ALL,
                real_features=features)
    args.update(kw)
    with pytest.warns(UserWarning, match="FID is biased"):
        return evaluate_generator(G, toy_net(), stats, **args)


def test_result_does_not_depend_on_batch_size_and_restores_train_mode(real):
    G = TinyG().train()
    a = _evaluate(G, real, batch_size=7)
    b = _evaluate(G, real, batch_size=200)
    assert G.training and not any(G.modes_seen)  # evaluated in eval mode, restored afterwards
    assert set(a) >= {"fid", "kid", "kid_std", "is", "is_std", "precision", "recall", "mode_entropy", "modes",
                      "eval_s"}
    for key in ("fid", "kid", "is", "precision", "recall", "mode_entropy"):
        assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key
    assert a["fid"] > 0 and 0 <= a["precision"] <= 1 and 0 <= a["recall"] <= 1
    c = _evaluate(G, real, seed=6, metrics=("fid",))
    assert c["fid"] != a["fid"]  # another seed: other samples


def test_conditional_generator_gets_cycling_labels(real):
    G = TinyG(conditional=True)
    _evaluate(G, real, num_classes=K, metrics=("fid",), batch_size=50)
    labels = torch.cat(G.seen_labels)
    assert torch.equal(labels, torch.arange(200) % K)


def test_generated_set_scores_like_the_same_images_saved_as_uint8(real):
    """The `ganray eval --samples` path (uint8 images) agrees with scoring the generator."""
    G = TinyG().eval()
    with torch.no_grad():
        x = G(_noise(5, torch.arange(200), LATENT))
    u8 = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    from_images = evaluate_images(u8, toy_net(), real[1], metrics=ALL, real_features=real[2])
    from_G = _evaluate(G, real)
    for key in ("fid", "kid", "is", "precision", "recall"):
        assert from_images[key] == pytest.approx(from_G[key], rel=1e-5, abs=1e-8), key


def test_real_images_score_as_real(real):
    data, stats, features = real
    out = evaluate_images(data.pixels, toy_net(), stats, metrics=("fid", "pr"), real_features=features)
    assert out["fid"] < 1e-9 * np.trace(stats.mean_cov()[1]) + 1e-12
    assert out["precision"] == 1.0 and out["recall"] == 1.0


def test_noise_depends_only_on_seed_and_sample_index():
    idx = torch.arange(2 * NOISE_BLOCK + 10)
    z = _noise(3, idx, LATENT)
    odd = idx[1::2]  # e.g. another rank's share, or another batching
    torch.testing.assert_close(_noise(3, odd, LATENT), z[odd])
    assert not torch.equal(_noise(4, idx, LATENT), z)


def test_bad_requests_fail_clearly(real):
    _, stats, _ = real
    G = TinyG()
    with pytest.raises(ValueError, match="kid and pr need real_features"):
        evaluate_generator(G, toy_net(), stats, num_samples=4096, batch_size=8, latent_dim=LATENT,
                           device="cpu", seed=0, metrics=("kid",))
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate_generator(G, toy_net(), stats, num_samples=4096, batch_size=8, latent_dim=LATENT,
                           device="cpu", seed=0, metrics=("fd",))


def test_all_gather_cat_is_identity_at_world_size_one():
    t = torch.arange(6).view(3, 2)
    assert all_gather_cat(t) is t
    assert isinstance(FeatureStats(2).all_reduce().count, int)


def test_prepare_eval_reads_the_real_images_only_until_classifier_and_statistics_are_cached(
        ray_session, tmp_path, monkeypatch):
    """A run's start-up must not decode the dataset a second time once evaluation is cached,
    nor build the feature network (the cached files are read without torch), and it must ship
    the same classifier and statistics either way."""
    import ray

    from ganray.config import debug
    from ganray.data import load_arrays
    from ganray.metrics import features, realdata
    from ganray.metrics.training import prepare_eval

    cfg = debug()  # the built-in digits, 16 px
    cfg.eval.features, cfg.eval.cache_dir, cfg.eval.fid_samples = "classifier", str(tmp_path), 512
    info = load_arrays(cfg.data, limit=1)[2]
    loads, builds = [], []
    real_load, real_build = realdata.load_real_data, features.build_feature_net
    monkeypatch.setattr(realdata, "load_real_data", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    monkeypatch.setattr(features, "build_feature_net", lambda *a, **k: builds.append(1) or real_build(*a, **k))
    with pytest.warns(UserWarning, match="fid_samples=512"):
        first = prepare_eval(cfg, info)  # trains the classifier, computes and caches the statistics
    assert loads == [1] and builds == [1] and len(list(tmp_path.glob("stats_*.npz"))) == 1
    with pytest.warns(UserWarning, match="fid_samples=512"):
        again = prepare_eval(cfg, info)
    assert loads == [1] and builds == [1]  # nothing decoded or built the second time
    (mu1, cov1, n1, f1), (mu2, cov2, n2, f2) = ray.get(first["real"]), ray.get(again["real"])
    assert n2 == n1 == 512 and f1 is None and f2 is None
    np.testing.assert_allclose(mu2, mu1, rtol=1e-12)
    np.testing.assert_allclose(cov2, cov1, rtol=1e-9, atol=1e-12)
    assert ray.get(again["net"]) == ray.get(first["net"])
    assert again["feature_name"] == first["feature_name"] == "classifier"


def test_cached_evaluation_inputs_fall_back_to_the_full_path_on_anything_unexpected(tmp_path):
    """The torch-free read answers only for an exact cache hit; anything else goes to the path
    that builds, checks and names the problem."""
    from ganray.config import debug
    from ganray.data import load_arrays
    from ganray.metrics import cachefiles
    from ganray.metrics.training import _built_inputs, _cached_classifier_inputs

    cfg = debug()
    cfg.eval.features, cfg.eval.cache_dir, cfg.eval.fid_samples = "auto", str(tmp_path), 256
    info = load_arrays(cfg.data, limit=1)[2]
    assert _cached_classifier_inputs(cfg, info, 0) is None  # nothing cached yet
    built = _built_inputs(cfg, info, 0)
    hit = _cached_classifier_inputs(cfg, info, 0)
    assert hit is not None and hit[0] == built[0] and hit[1][2] == built[1][2] == 256
    assert _cached_classifier_inputs(cfg, info, 256) is None  # KID/PR need raw features the file lacks
    other = cfg.model_copy(deep=True)
    other.eval.fid_samples = 512  # no statistics for this count yet
    assert _cached_classifier_inputs(other, info, 0) is None
    other = cfg.model_copy(deep=True)
    other.data.resolution = 32  # the cached classifier is 16 px: the full path names the mismatch
    assert _cached_classifier_inputs(other, info, 0) is None
    other = cfg.model_copy(deep=True)
    other.eval.features = "inception"
    assert _cached_classifier_inputs(other, info, 0) is None
    clf_path = cachefiles.default_classifier_path(tmp_path, info.fingerprint)
    clf_path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    assert _cached_classifier_inputs(cfg, info, 0) is None
    with pytest.raises(ValueError, match="cannot read classifier"):
        cachefiles.classifier_meta(clf_path.read_bytes(), str(clf_path))
