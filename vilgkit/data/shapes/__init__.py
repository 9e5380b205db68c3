"""The Shapes world: a synthetic image–text data set whose quality is measurable exactly on a CPU.

Public API: :class:`ShapesDataset` (registered in ``DATASETS``), the detector
:func:`detect_objects`, and the scorers :func:`caption_matches_scene`, :func:`image_matches_scene`,
:func:`image_matches_caption`; captions/VQA in English and Chinese (:func:`caption`,
:func:`qa_pairs`, :func:`parse_caption`); the world's attributes (:data:`SHAPES`, :data:`COLORS`,
:data:`POSITIONS`, :data:`SIZES`, :data:`PALETTE`).
"""

from vilgkit.data.shapes.dataset import ShapesDataset
from vilgkit.data.shapes.detector import classify_shape, detect_objects, snap_to_palette
from vilgkit.data.shapes.language import (
    LANGUAGES,
    QUESTION_TYPES,
    canonical_answer,
    caption,
    detect_language,
    parse_caption,
    qa_pairs,
)
from vilgkit.data.shapes.scoring import ATTRIBUTES, caption_matches_scene, image_matches_caption, image_matches_scene
from vilgkit.data.shapes.world import (
    COLORS,
    DEFAULT_HELD_OUT,
    PALETTE,
    POSITIONS,
    SHAPES,
    SIZES,
    render_scene,
    scene_key,
)

__all__ = [
    "ATTRIBUTES",
    "COLORS",
    "DEFAULT_HELD_OUT",
    "LANGUAGES",
    "PALETTE",
    "POSITIONS",
    "QUESTION_TYPES",
    "SHAPES",
    "SIZES",
    "ShapesDataset",
    "canonical_answer",
    "caption",
    "caption_matches_scene",
    "classify_shape",
    "detect_language",
    "detect_objects",
    "image_matches_caption",
    "image_matches_scene",
    "parse_caption",
    "qa_pairs",
    "render_scene",
    "scene_key",
    "snap_to_palette",
]
