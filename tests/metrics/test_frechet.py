"""Fréchet distance vs scipy's sqrtm formula, and streaming statistics vs one-shot numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg

from vilgkit.metrics import FID, FeatureExtractor, FeatureStats, frechet_distance


def _scipy_fid(mu1, s1, mu2, s2):
    covmean = linalg.sqrtm(s1 @ s2)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _spd(rng, d, n=None):
    a = rng.normal(size=(n or 3 * d, d))
    return np.atleast_2d(np.cov(a, rowvar=False))


@pytest.mark.parametrize("d", [1, 8, 64])
def test_frechet_matches_scipy_sqrtm(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d) + 0.5
    s1, s2 = _spd(rng, d), _spd(rng, d) * 2.0
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_scipy_fid(mu1, s1, mu2, s2), rel=1e-8, abs=1e-8)


def test_frechet_closed_forms():
    # Identical Gaussians: 0. Diagonal covariances: Σ(μ1-μ2)² + Σ(√a - √b)².
    rng = np.random.default_rng(0)
    s = _spd(rng, 16)
    mu = rng.normal(size=16)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-8)
    a, b = rng.uniform(0.1, 3, size=5), rng.uniform(0.1, 3, size=5)
    m1, m2 = rng.normal(size=5), rng.normal(size=5)
    expected = ((m1 - m2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_singular_covariance_is_finite_and_nonnegative():
    rng = np.random.default_rng(1)
    s1, s2 = _spd(rng, 32, n=8), _spd(rng, 32, n=8)  # rank 7 < 32
    value = frechet_distance(np.zeros(32), s1, np.ones(32), s2)
    assert np.isfinite(value) and value >= 32 - 1e-6


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_streaming_stats_equal_numpy_batch():
    rng = np.random.default_rng(2)
    x = rng.normal(loc=50.0, scale=3.0, size=(1000, 24))  # large mean: tests the stable update
    stats = FeatureStats(24)
    for chunk in np.array_split(x, [1, 7, 300, 301, 999]):
        stats.update(torch.from_numpy(chunk))
    assert stats.count == 1000
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.covariance, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)
    a, b = FeatureStats(24), FeatureStats(24)
    a.update(x[:400])
    b.update(x[400:])
    a.merge(b)
    np.testing.assert_allclose(a.covariance, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)


def test_stats_save_load_round_trip(tmp_path):
    x = np.random.default_rng(3).normal(size=(50, 6))
    stats = FeatureStats(6)
    stats.update(x)
    stats.save(tmp_path / "s.npz")
    back = FeatureStats.load(tmp_path / "s.npz")
    assert back.count == 50
    np.testing.assert_array_equal(back.mean, stats.mean)
    np.testing.assert_allclose(back.covariance, stats.covariance, rtol=1e-14)


def test_stats_reject_bad_input():
    stats = FeatureStats(4)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        stats.update(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        stats.update(np.full((2, 4), np.nan))
    with pytest.raises(ValueError, match="at least 2"):
        _ = stats.covariance


class _PixelStats(FeatureExtractor):
    """A deterministic stand-in extractor: per-channel means and a few pooled pixels."""

    feature_dim = 15
    name = "pixel-stats"

    def forward(self, images):
        pooled = torch.nn.functional.adaptive_avg_pool2d(images, 2).flatten(1)  # [B, 12]
        return torch.cat([pooled, images.pow(2).mean(dim=(2, 3))], 1)  # [B, 15]


def test_fid_metric_streaming_equals_batch_computation():
    g = torch.Generator().manual_seed(0)
    real = torch.rand(96, 3, 8, 8, generator=g) * 2 - 1
    fake = (torch.rand(80, 3, 8, 8, generator=g) * 2 - 1) * 0.7 + 0.1
    streamed = FID.with_extractor(_PixelStats(), batch_size=7)
    for i in range(0, 96, 13):
        streamed.update(real=real[i : i + 13])
    for i in range(0, 80, 11):
        streamed.update(generated=fake[i : i + 11])
    ext = _PixelStats()
    fr, ff = ext(real).double().numpy(), ext(fake).double().numpy()
    expected = _scipy_fid(fr.mean(0), np.cov(fr, rowvar=False), ff.mean(0), np.cov(ff, rowvar=False))
    result = streamed.compute()
    assert result["fid"] == pytest.approx(expected, rel=1e-6)
    assert result["fid_num_generated"] == 80
    assert result["fid"] > 0.01  # the two sets differ


def test_fid_metric_needs_both_sides():
    metric = FID.with_extractor(_PixelStats())
    metric.update(generated=torch.zeros(4, 3, 8, 8))
    with pytest.raises(ValueError, match="both generated and real"):
        metric.compute()
