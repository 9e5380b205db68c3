"""Fréchet distance between Gaussian feature statistics, with streaming (float64) accumulation.

FID (Heusel et al. 2017; paper §4.2) is the Fréchet distance between two Gaussians fitted to
feature vectors of real and generated images::

    d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2})

``FeatureStats`` accumulates mean and covariance batch by batch (Chan et al.'s parallel update of
the mean and the co-moment matrix), so 30k images never need to be held in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class FeatureStats:
    """Running mean and covariance of ``D``-dimensional features, accumulated in float64.

    Args:
        dim: feature dimension ``D``.

    Example:
        >>> stats = FeatureStats(2048)
        >>> for batch in loader: stats.update(extractor(batch))
        >>> mu, sigma = stats.mean, stats.covariance
    """

    def __init__(self, dim: int) -> None:
        if dim <= 0:
            raise ValueError(f"feature dimension must be positive, got {dim}")
        self.dim = dim
        self.count = 0
        self._mean = np.zeros(dim, dtype=np.float64)
        # Co-moment matrix Σ (x - mean)(x - mean)ᵀ: merged per batch, which is stabler than
        # accumulating raw second moments when the features have a large mean.
        self._comoment = np.zeros((dim, dim), dtype=np.float64)

    def update(self, features: torch.Tensor | np.ndarray) -> None:
        """Add a batch of features ``[N, D]``."""
        x = (
            features.detach().to("cpu", torch.float64).numpy()
            if isinstance(features, torch.Tensor)
            else np.asarray(features, dtype=np.float64)
        )
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected features of shape [N, {self.dim}], got {list(x.shape)}")
        if not np.isfinite(x).all():
            raise ValueError("features contain NaN or Inf (the extractor or the images are broken)")
        n_b = x.shape[0]
        if n_b == 0:
            return
        mean_b = x.mean(axis=0)
        centred = x - mean_b
        comoment_b = centred.T @ centred
        n_a, total = self.count, self.count + n_b
        delta = mean_b - self._mean
        self._mean += delta * (n_b / total)
        self._comoment += comoment_b + np.outer(delta, delta) * (n_a * n_b / total)
        self.count = total

    def merge(self, other: FeatureStats) -> None:
        """Fold another accumulator's statistics into this one (e.g. from another rank)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge stats of dimension {other.dim} into {self.dim}")
        if other.count == 0:
            return
        n_a, n_b = self.count, other.count
        total = n_a + n_b
        delta = other._mean - self._mean
        self._mean += delta * (n_b / total)
        self._comoment += other._comoment + np.outer(delta, delta) * (n_a * n_b / total)
        self.count = total

    @property
    def mean(self) -> np.ndarray:
        """``μ`` ``[D]`` (float64)."""
        if self.count == 0:
            raise ValueError("no features accumulated yet")
        return self._mean.copy()

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased sample covariance ``Σ`` ``[D, D]`` (float64), as ``numpy.cov`` computes it."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 samples, have {self.count}")
        return self._comoment / (self.count - 1)

    def save(self, path: str | Path) -> None:
        """Write ``mu``, ``sigma`` and ``count`` to an ``.npz`` file (pytorch-fid's stats layout)."""
        np.savez(Path(path), mu=self.mean, sigma=self.covariance, count=np.int64(self.count))

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        """Read stats written by :meth:`save` (or a pytorch-fid ``.npz`` with ``mu``/``sigma``)."""
        with np.load(Path(path), allow_pickle=False) as data:  # statistics only: never unpickle
            mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
            count = int(data["count"]) if "count" in data else 2
        stats = cls(mu.shape[0])
        stats._mean = mu
        stats._comoment = sigma * (count - 1)
        stats.count = count
        return stats


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    ``Tr((Σ₁Σ₂)^{1/2})`` is computed as the sum of square roots of the eigenvalues of the symmetric
    PSD matrix ``Σ₁^{1/2} Σ₂ Σ₁^{1/2}`` (which has the same spectrum as ``Σ₁Σ₂``). Unlike a general
    matrix square root of the non-symmetric ``Σ₁Σ₂`` this needs only ``eigh``, never goes complex,
    and tolerates singular covariances (fewer samples than dimensions), where ``sqrtm`` needs an
    ``eps`` offset.

    Args:
        mu1, mu2: means ``[D]``.
        sigma1, sigma2: covariances ``[D, D]`` (symmetric positive semi-definite).

    Returns:
        The squared Fréchet distance (what papers report as FID).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"means have different shapes: {mu1.shape} vs {mu2.shape}")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"covariances must be [{d}, {d}], got {sigma1.shape} and {sigma2.shape}")
    diff = mu1 - mu2
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    eigvals = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eigvals, 0.0, None)).sum()
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix (negative round-off eigenvalues clipped to 0)."""
    eigvals, eigvecs = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


def fid_from_stats(real: FeatureStats, fake: FeatureStats) -> float:
    """FID between two accumulated feature sets."""
    return frechet_distance(real.mean, real.covariance, fake.mean, fake.covariance)
