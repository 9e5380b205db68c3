"""``ShapesDataset``: the seeded, procedurally rendered Shapes world as a map-style data set."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
from torch.utils.data import Dataset

from vilgkit.data.shapes.language import LANGUAGES, NUM_TEMPLATES, QUESTION_TYPES, caption, qa_pairs, sample_qa
from vilgkit.data.shapes.world import (
    COLORS,
    DEFAULT_HELD_OUT,
    SHAPES,
    check_pairs,
    render_scene,
    sample_scene,
    to_tensor_image,
)
from vilgkit.registry import DATASETS

#: independent random streams per split (so train and test never share a scene by construction)
_SPLIT_STREAM = {"train": 0, "val": 1, "test": 2}


@DATASETS.register_module()
class ShapesDataset(Dataset):
    """Scenes of 1–3 coloured shapes with captions and VQA pairs, in English and/or Chinese.

    Sample ``i`` is a pure function of ``(seed, split, i)``: rendering happens on the fly and the
    rendered pixels are cached (as uint8, up to ``cache_mb``) so later epochs do not re-render.

    Splits (the compositional split of issue 3):

    * ``train``: no object ever shows a ``held_out`` colour–shape pair;
    * ``val``: more scenes from the training distribution (an independent random stream);
    * ``test``: every scene contains at least one held-out pair (other objects are unconstrained).

    With ``held_out=[]`` there is no compositional split and all three splits share one distribution.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        size: number of samples.
        image_size: side in pixels (≥ 12; the detector is exact from 64 px up).
        languages: languages of captions and questions; sample ``i`` uses
            ``languages[i % len(languages)]`` so a bilingual set is exactly balanced.
        seed: base seed.
        min_objects, max_objects: object count range per scene (1–9).
        held_out: ``[colour, shape]`` pairs kept out of training (default: one per shape, see
            :data:`vilgkit.data.shapes.world.DEFAULT_HELD_OUT`).
        templates: caption templates to draw from (default: all); ``[0]`` gives one fixed phrasing.
        cache_mb: memory budget of the rendered-pixel cache (0 disables it).
        train_question_weights: relative weights of the question types (``color``, ``shape``,
            ``position``, ``size``, ``count``; missing ones weigh 1) when drawing each sample's
            question on the ``train`` split; e.g. ``{position: 3}`` trains more on the questions
            that need an object found by its description. ``val`` and ``test`` always draw types
            uniformly, so scores stay comparable whatever a recipe trains on.

    Each sample is a dict: ``image`` (float ``[3, H, W]`` in [-1, 1]), ``caption``, ``references``
    (the caption in every template of the sample's language), ``question``, ``answer``,
    ``question_type``, ``lang``, ``scene`` (ground truth: list of object dicts), ``index``.
    """

    def __init__(
        self,
        split: Literal["train", "val", "test"] = "train",
        size: int = 10000,
        image_size: int = 64,
        languages: Sequence[str] = ("en",),
        seed: int = 0,
        min_objects: int = 1,
        max_objects: int = 3,
        held_out: Sequence[tuple[str, str]] | None = None,
        templates: Sequence[int] | None = None,
        cache_mb: float = 256.0,
        train_question_weights: dict[str, float] | None = None,
    ) -> None:
        if split not in _SPLIT_STREAM:
            raise ValueError(f"split must be one of {', '.join(_SPLIT_STREAM)}, got {split!r}")
        if size < 0:
            raise ValueError(f"size must be ≥ 0, got {size}")
        if image_size < 12:
            raise ValueError(f"image_size must be at least 12 pixels, got {image_size}")
        if isinstance(languages, str):
            languages = [languages]
        if not languages or any(lang not in LANGUAGES for lang in languages):
            raise ValueError(f"languages must be a non-empty list drawn from {list(LANGUAGES)}, got {languages!r}")
        if not 1 <= min_objects <= max_objects <= 9:
            raise ValueError(f"need 1 ≤ min_objects ≤ max_objects ≤ 9, got {min_objects}, {max_objects}")
        templates = list(range(NUM_TEMPLATES)) if templates is None else list(templates)
        if not templates or any(not 0 <= t < NUM_TEMPLATES for t in templates):
            raise ValueError(f"templates must be a non-empty list of ints in [0, {NUM_TEMPLATES}), got {templates}")
        if train_question_weights is not None:
            unknown = sorted(set(train_question_weights) - set(QUESTION_TYPES))
            if unknown:
                raise ValueError(
                    f"train_question_weights: unknown question type(s) {unknown}; choose from {list(QUESTION_TYPES)}"
                )
            if any(not float(w) > 0 for w in train_question_weights.values()):
                raise ValueError(f"train_question_weights must all be > 0, got {dict(train_question_weights)}")
        self.split = split
        # only the training split is re-weighted: evaluation always sees the uniform mix
        self.question_weights = (
            {k: float(v) for k, v in train_question_weights.items()}
            if train_question_weights is not None and split == "train"
            else None
        )
        self.size = int(size)
        self.image_size = int(image_size)
        self.languages = list(languages)
        self.seed = int(seed)
        self.min_objects, self.max_objects = int(min_objects), int(max_objects)
        self.held_out = check_pairs(DEFAULT_HELD_OUT if held_out is None else held_out)
        self.templates = templates
        all_pairs = [(c, s) for c in COLORS for s in SHAPES]
        self.train_pairs = [p for p in all_pairs if p not in set(self.held_out)]
        if not self.train_pairs:
            raise ValueError("held_out holds out every colour–shape pair; training would be empty")
        if split == "test" and self.held_out:
            self._pairs, self._required = all_pairs, self.held_out
        else:
            self._pairs, self._required = (all_pairs if not self.held_out else self.train_pairs), None
        self._cache: dict[int, np.ndarray] = {}
        self._cache_budget = int(cache_mb * 2**20) // (3 * self.image_size**2)

    @classmethod
    def conformance_args(cls) -> dict[str, Any]:
        """Tiny init kwargs for the registry conformance tests."""
        return {"size": 8, "image_size": 32}

    def __len__(self) -> int:
        return self.size

    # -------------------------------------------------------------------------------- sampling

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, _SPLIT_STREAM[self.split], index])

    def _check_index(self, index: int) -> int:
        index = int(index)
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for a ShapesDataset of size {self.size}")
        return index

    def describe(self, index: int) -> dict[str, Any]:
        """Everything of sample ``index`` except the pixels (cheap: no rendering)."""
        index = self._check_index(index)
        rng = self._rng(index)
        scene = sample_scene(
            rng, self._pairs, min_objects=self.min_objects, max_objects=self.max_objects, required=self._required
        )
        lang = self.languages[index % len(self.languages)]
        template = self.templates[int(rng.integers(len(self.templates)))]
        qa = sample_qa(scene, lang, rng, self.question_weights)
        return {
            "caption": caption(scene, lang, template),
            "references": [caption(scene, lang, t) for t in range(NUM_TEMPLATES)],
            "question": qa["question"],
            "answer": qa["answer"],
            "question_type": qa["type"],
            "lang": lang,
            "scene": scene,
            "index": index,
        }

    def render(self, index: int, scene: list[dict[str, Any]] | None = None) -> np.ndarray:
        """The ``uint8 [H, W, 3]`` pixels of sample ``index`` (cached)."""
        index = self._check_index(index)
        pixels = self._cache.get(index)
        if pixels is None:
            pixels = render_scene(scene if scene is not None else self.describe(index)["scene"], self.image_size)
            if len(self._cache) < self._cache_budget:
                self._cache[index] = pixels
        return pixels

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.describe(index)
        item["image"] = to_tensor_image(self.render(item["index"], item["scene"]))
        return item

    # -------------------------------------------------------------------------------- texts

    def corpus_texts(self, index: int) -> list[str]:
        """Every text of sample ``index`` in its language: all caption phrasings and all QA pairs
        (what a text tokenizer should be fitted on; no rendering)."""
        item = self.describe(index)
        texts = list(item["references"])
        for qa in qa_pairs(item["scene"], item["lang"]):
            texts += [qa["question"], qa["answer"]]
        return texts

    def iter_texts(self, limit: int | None = None) -> Iterator[str]:
        """Texts of the first ``limit`` samples (all by default) for tokenizer fitting."""
        for i in range(min(self.size, limit if limit is not None else self.size)):
            yield from self.corpus_texts(i)
