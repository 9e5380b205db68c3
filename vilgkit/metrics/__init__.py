"""Evaluation metrics (registered in ``METRICS``): FID, caption metrics, VQA accuracy, Shapes scores.

``metrics_for(keys)`` builds the metrics that ``vilgkit eval --metrics fid,caption,vqa,shapes``
names; every metric follows :class:`vilgkit.metrics.base.Metric`.
"""

from vilgkit.metrics.base import TASKS, Metric
from vilgkit.metrics.caption import CaptionMetrics, caption_scores, char_tokenize
from vilgkit.metrics.fid import FID, build_feature_extractor
from vilgkit.metrics.frechet import FeatureStats, fid_from_stats, frechet_distance
from vilgkit.metrics.inception import FeatureExtractor, InceptionFeatureExtractor, default_fid_weights_path
from vilgkit.metrics.shapes import ShapesCaptionAccuracy, ShapesPromptAccuracy
from vilgkit.metrics.shapes_features import ShapesFeatureExtractor, train_shapes_feature_extractor
from vilgkit.metrics.vqa import VQAAccuracy, normalize_answer, vqa_scores

#: ``--metrics`` names and the metric classes each one stands for
METRIC_KEYS: dict[str, tuple[type[Metric], ...]] = {
    "fid": (FID,),
    "caption": (CaptionMetrics,),
    "vqa": (VQAAccuracy,),
    "shapes": (ShapesPromptAccuracy, ShapesCaptionAccuracy),
}

__all__ = [
    "FID",
    "METRIC_KEYS",
    "TASKS",
    "CaptionMetrics",
    "FeatureExtractor",
    "FeatureStats",
    "InceptionFeatureExtractor",
    "Metric",
    "ShapesCaptionAccuracy",
    "ShapesFeatureExtractor",
    "ShapesPromptAccuracy",
    "VQAAccuracy",
    "build_feature_extractor",
    "caption_scores",
    "char_tokenize",
    "default_fid_weights_path",
    "fid_from_stats",
    "frechet_distance",
    "normalize_answer",
    "train_shapes_feature_extractor",
    "vqa_scores",
]
