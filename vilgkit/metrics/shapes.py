"""Shapes-world scores: exact checks of generated images and captions against ground-truth scenes.

They wrap the data package's detector-based scorers (``vilgkit.data.shapes``):

* ``ShapesPromptAccuracy`` (text→image): fraction of generated images in which the detector finds
  exactly the prompted objects (shape, colour, position and size; nothing missing, nothing extra);
* ``ShapesCaptionAccuracy`` (image→text): per-attribute accuracy of generated captions and the
  fraction of captions that state every object's attributes correctly.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from vilgkit.metrics.base import Metric, check_lengths
from vilgkit.registry import METRICS

CAPTION_ATTRIBUTES = ("shape", "color", "position", "size")


@METRICS.register_module()
class ShapesPromptAccuracy(Metric):
    """Prompt accuracy of generated Shapes images (task ``text2image``)."""

    key: ClassVar[str] = "shapes"
    task: ClassVar[str] = "text2image"
    inputs: ClassVar[tuple[str, ...]] = ("generated", "scenes")

    def reset(self) -> None:
        self._matches: list[bool] = []
        self._found = 0
        self._objects = 0

    def update(self, generated: torch.Tensor, scenes: list[list[dict]]) -> None:  # type: ignore[override]
        from vilgkit.data.shapes import image_matches_scene

        check_lengths(generated=list(range(len(generated))), scenes=scenes)
        for image, scene in zip(generated.detach().float().cpu(), scenes):
            result = image_matches_scene(image, scene)
            self._matches.append(bool(result["match"]))
            self._found += int(result["objects_found"])
            self._objects += int(result["num_objects"])

    def per_sample(self) -> list[bool]:
        """Whether each scored image matched its prompt (in update order)."""
        return list(self._matches)

    def compute(self) -> dict[str, float]:
        if not self._matches:
            raise ValueError("no images scored")
        return {
            "shapes_prompt_accuracy": sum(self._matches) / len(self._matches),
            "shapes_object_recall": self._found / max(self._objects, 1),
            "shapes_num_images": float(len(self._matches)),
        }


@METRICS.register_module()
class ShapesCaptionAccuracy(Metric):
    """Attribute accuracy of generated Shapes captions (task ``image2text``)."""

    key: ClassVar[str] = "shapes"
    task: ClassVar[str] = "image2text"
    inputs: ClassVar[tuple[str, ...]] = ("predictions", "scenes")

    def reset(self) -> None:
        self._results: list[dict[str, Any]] = []

    def update(self, predictions: list[str], scenes: list[list[dict]]) -> None:  # type: ignore[override]
        from vilgkit.data.shapes import caption_matches_scene

        check_lengths(predictions=predictions, scenes=scenes)
        self._results.extend(caption_matches_scene(p, s) for p, s in zip(predictions, scenes))

    def per_sample(self) -> list[bool]:
        """Whether each caption stated every object correctly (in update order)."""
        return [bool(r["all_correct"]) for r in self._results]

    def compute(self) -> dict[str, float]:
        if not self._results:
            raise ValueError("no captions scored")
        n = len(self._results)
        out = {f"shapes_caption_{a}": sum(r[a] for r in self._results) / n for a in CAPTION_ATTRIBUTES}
        out["shapes_caption_all_correct"] = sum(r["all_correct"] for r in self._results) / n
        out["shapes_caption_count_correct"] = sum(r["count_correct"] for r in self._results) / n
        out["shapes_num_captions"] = float(n)
        return out
