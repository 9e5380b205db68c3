"""The FID metric (paper §4.2): streaming feature statistics of real and generated images."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from vilgkit.metrics.base import Metric
from vilgkit.metrics.frechet import FeatureStats, fid_from_stats
from vilgkit.metrics.inception import FeatureExtractor, InceptionFeatureExtractor
from vilgkit.registry import METRICS


def build_feature_extractor(extractor: str, weights: str | None = None) -> FeatureExtractor:
    """``"inception"`` (FID's InceptionV3 from a local file) or ``"shapes"`` (a trained Shapes CNN)."""
    if extractor == "inception":
        return InceptionFeatureExtractor(weights)
    if extractor == "shapes":
        from vilgkit.metrics.shapes_features import ShapesFeatureExtractor

        if weights is None:
            raise ValueError(
                "the Shapes feature extractor needs `weights`: the directory a TrainShapesFeatures stage wrote "
                "(or vilgkit.metrics.train_shapes_feature_extractor(out_dir=...))"
            )
        return ShapesFeatureExtractor.load(weights)
    raise ValueError(f"unknown feature extractor {extractor!r}; choose 'inception' or 'shapes'")


@METRICS.register_module()
class FID(Metric):
    """Fréchet distance between features of real and generated images (task ``text2image``).

    Features are accumulated per batch in float64 (:class:`FeatureStats`), so any number of images
    streams through in constant memory. Real statistics can come from images passed to
    :meth:`update` (``real=``) or from a saved ``.npz`` (``reference_stats``).

    Args:
        extractor: ``"inception"`` or ``"shapes"`` (see :func:`build_feature_extractor`).
        weights: the extractor's weights (Inception ``.pth`` file; Shapes extractor directory).
        reference_stats: optional ``.npz`` with ``mu``/``sigma`` of the real images.
        batch_size: images per extractor pass.
        device: where the extractor runs (default CPU).
    """

    key: ClassVar[str] = "fid"
    task: ClassVar[str] = "text2image"
    inputs: ClassVar[tuple[str, ...]] = ("generated", "real")

    def __init__(
        self,
        extractor: str = "shapes",
        weights: str | None = None,
        reference_stats: str | None = None,
        batch_size: int = 64,
        device: str = "cpu",
    ) -> None:
        if extractor not in ("inception", "shapes"):
            raise ValueError(f"unknown feature extractor {extractor!r}; choose 'inception' or 'shapes'")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.extractor_kind, self.weights = extractor, weights
        self.reference_stats, self.batch_size, self.device = reference_stats, batch_size, torch.device(device)
        self._extractor: FeatureExtractor | None = None
        super().__init__()

    @classmethod
    def with_extractor(cls, extractor: FeatureExtractor, **kwargs: Any) -> FID:
        """An FID metric over an already-built feature extractor (any :class:`FeatureExtractor`)."""
        metric = cls(**kwargs)
        metric._extractor = extractor.eval()
        return metric

    @property
    def extractor(self) -> FeatureExtractor:
        if self._extractor is None:
            self._extractor = build_feature_extractor(self.extractor_kind, self.weights).eval()
        return self._extractor.to(self.device)

    def reset(self) -> None:
        self.real_stats: FeatureStats | None = None
        self.fake_stats: FeatureStats | None = None
        if self.reference_stats is not None:
            self.real_stats = FeatureStats.load(self.reference_stats)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Features ``[B, D]`` of images ``[B, 3, H, W]`` in [-1, 1], computed in chunks."""
        out = [
            self.extractor(images[i : i + self.batch_size].to(self.device)).float().cpu()
            for i in range(0, images.shape[0], self.batch_size)
        ]
        return torch.cat(out)

    def _accumulate(self, stats: FeatureStats | None, images: torch.Tensor) -> FeatureStats:
        feats = self.features(images)
        stats = stats or FeatureStats(feats.shape[1])
        stats.update(feats)
        return stats

    def update(self, generated: torch.Tensor | None = None, real: torch.Tensor | None = None) -> None:  # type: ignore[override]
        """Add generated and/or real images ``[B, 3, H, W]`` in [-1, 1]."""
        if generated is not None and len(generated):
            self.fake_stats = self._accumulate(self.fake_stats, generated)
        if real is not None and len(real) and self.reference_stats is None:
            self.real_stats = self._accumulate(self.real_stats, real)

    def compute(self) -> dict[str, float]:
        if self.fake_stats is None or self.real_stats is None:
            raise ValueError("FID needs both generated and real images (or reference_stats)")
        return {
            "fid": fid_from_stats(self.real_stats, self.fake_stats),
            "fid_num_generated": float(self.fake_stats.count),
        }

    def settings(self) -> dict[str, Any]:
        name = self._extractor.name if self._extractor is not None else self.extractor_kind
        return {
            "extractor": name,
            "weights": self.weights,
            "reference_stats": self.reference_stats,
            "num_real": self.real_stats.count if self.real_stats else 0,
        }
