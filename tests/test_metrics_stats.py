"""FeatureStats accumulation and the real-statistics cache (atomic, keyed, refusing mismatches)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ganray.metrics import FeatureStats, StatsCacheError, StatsKey, load_stats, real_stats, save_stats
from ganray.metrics.features import FeatureNet
from ganray.metrics.realdata import RealData


def test_feature_stats_match_numpy_in_any_batching():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(257, 6, generator=g) * 3 + 1
    stats = FeatureStats(6)
    for chunk in f.split(50):
        stats.update(chunk)
    stats.all_reduce()  # world size 1: unchanged
    mu, cov = stats.mean_cov()
    ref = f.double().numpy()
    assert stats.count == 257
    np.testing.assert_allclose(mu, ref.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(ref, rowvar=False), rtol=1e-10)
    mu2, cov2 = FeatureStats.from_mean_cov(mu, cov, 257).mean_cov()
    np.testing.assert_allclose(cov2, cov, rtol=1e-10)


def test_feature_stats_reject_wrong_width_and_too_few_rows():
    stats = FeatureStats(4)
    with pytest.raises(ValueError, match="N x 4"):
        stats.update(torch.zeros(3, 5))
    stats.update(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="at least 2"):
        stats.mean_cov()


def _stats(seed: int = 0) -> FeatureStats:
    return FeatureStats(3).update(torch.randn(20, 3, generator=torch.Generator().manual_seed(seed)))


KEY = StatsKey(dataset="data123", network="clf-abc", resolution=32, num_samples=20)


def test_cache_round_trip_with_features(tmp_path):
    features = np.arange(12, dtype=np.float32).reshape(4, 3)
    path = save_stats(tmp_path / KEY.filename(), KEY, _stats(), features)
    stats, loaded = load_stats(path, KEY)
    np.testing.assert_allclose(stats.mean_cov()[1], _stats().mean_cov()[1], rtol=1e-12)
    np.testing.assert_array_equal(loaded, features)
    assert not list(tmp_path.glob("*.tmp"))  # the temp file was renamed, not left behind


@pytest.mark.parametrize("field, value", [("network", "incv3-other"), ("resolution", 64),
                                          ("dataset", "otherdata"), ("num_samples", 10)])
def test_cache_refuses_statistics_for_other_inputs(tmp_path, field, value):
    path = save_stats(tmp_path / "stats.npz", KEY, _stats())
    wanted = StatsKey(**{**KEY.__dict__, field: value})
    with pytest.raises(StatsCacheError, match=f"refusing cached statistics .*{field}: file has"):
        load_stats(path, wanted)


def test_cache_refuses_foreign_and_pickled_files(tmp_path):
    np.savez(tmp_path / "plain.npz", mu=np.zeros(3))
    with pytest.raises(StatsCacheError, match="not a ganray feature-statistics file"):
        load_stats(tmp_path / "plain.npz", KEY)
    np.savez(tmp_path / "pickled.npz", format=np.array([{"a": 1}], dtype=object))
    with pytest.raises(StatsCacheError, match="cannot read"):
        load_stats(tmp_path / "pickled.npz", KEY)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(StatsCacheError, match="cannot read"):
        load_stats(tmp_path / "junk.npz", KEY)


class _CountingNet(FeatureNet):
    """Mean-pooled pixels per channel as 'features'; counts calls to prove the cache is used."""

    def __init__(self, fingerprint: str = "toy-1"):
        module = torch.nn.Identity()
        module.register_parameter("p", torch.nn.Parameter(torch.zeros(1)))
        super().__init__("toy", 2, fingerprint, self._fwd, module)
        self.calls = 0

    def _fwd(self, x):
        self.calls += 1
        return torch.stack([x.mean((1, 2, 3)), x.std((1, 2, 3))], 1), None


def _real(n: int = 40) -> RealData:
    pixels = np.random.default_rng(0).integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)
    return RealData(pixels, None, "fp-toy")


def test_real_stats_computed_once_then_loaded(tmp_path):
    net = _CountingNet()
    stats, features = real_stats(net, _real(), num_samples=30, cache_dir=tmp_path, batch_size=8)
    calls = net.calls
    assert stats.count == 30 and features.shape == (30, 2) and calls == 4
    stats2, features2 = real_stats(net, _real(), num_samples=30, cache_dir=tmp_path)
    assert net.calls == calls  # served from the cache
    np.testing.assert_array_equal(features2, features)
    np.testing.assert_allclose(stats2.mean_cov()[0], stats.mean_cov()[0], rtol=1e-12)
    # Another network gets its own file, never the first network's statistics.
    other = _CountingNet("toy-2")
    real_stats(other, _real(), num_samples=30, cache_dir=tmp_path)
    assert other.calls > 0 and len(list(tmp_path.glob("stats_*.npz"))) == 2


def test_real_stats_refuse_a_tampered_cache_file(tmp_path):
    net = _CountingNet()
    real_stats(net, _real(), num_samples=30, cache_dir=tmp_path)
    (path,) = tmp_path.glob("stats_*.npz")
    save_stats(path, StatsKey("fp-toy", "toy-1", 16, 30), _stats())  # same name, other resolution inside
    with pytest.raises(StatsCacheError, match="resolution: file has 16, expected 8"):
        real_stats(net, _real(), num_samples=30, cache_dir=tmp_path)
