"""Scorers: does a caption state a scene correctly, does an image show what a prompt asks for.

Both directions are scored with an optimal one-to-one assignment (Hungarian, scipy) between what
was asked and what was found, so that object order never matters.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from vilgkit.data.shapes.detector import detect_objects
from vilgkit.data.shapes.language import parse_caption
from vilgkit.data.shapes.world import scene_key

ATTRIBUTES = ("shape", "color", "position", "size")


def _assign(rows: list[dict[str, Any]], cols: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """Pairs (i, j) maximising the number of agreeing attributes (``None`` never agrees)."""
    if not rows or not cols:
        return []
    agree = np.array(
        [[sum(r.get(a) is not None and r.get(a) == c.get(a) for a in ATTRIBUTES) for c in cols] for r in rows]
    )
    ri, ci = linear_sum_assignment(-agree)
    return list(zip(ri.tolist(), ci.tolist()))


def caption_matches_scene(caption: str, scene: list[dict[str, Any]], lang: str | None = None) -> dict[str, Any]:
    """Which attributes a caption states correctly for a scene.

    Each scene object is paired with at most one caption mention (optimal assignment); an attribute
    counts as correct when the paired mention states it and states it right.

    Args:
        caption: English or Chinese text (the language is detected when ``lang`` is ``None``).
        scene: the ground-truth objects.

    Returns:
        ``shape``, ``color``, ``position``, ``size``: fraction of scene objects whose attribute is
        stated correctly; ``objects_correct``: objects with all four right; ``num_objects``,
        ``num_mentions``; ``count_correct``: as many mentions as objects; ``all_correct``: every
        object fully right and nothing extra mentioned.
    """
    mentions = parse_caption(caption, lang)
    n = len(scene)
    correct = {a: 0 for a in ATTRIBUTES}
    objects_correct = 0
    for i, j in _assign(scene, mentions):
        ok = [mentions[j][a] == scene[i][a] for a in ATTRIBUTES]
        for a, good in zip(ATTRIBUTES, ok):
            correct[a] += good
        objects_correct += all(ok)
    out: dict[str, Any] = {a: (correct[a] / n if n else 1.0) for a in ATTRIBUTES}
    out.update(
        objects_correct=objects_correct,
        num_objects=n,
        num_mentions=len(mentions),
        count_correct=len(mentions) == n,
        all_correct=objects_correct == n and len(mentions) == n,
    )
    return out


def image_matches_scene(image: Any, scene: list[dict[str, Any]], **detect_kwargs: Any) -> dict[str, Any]:
    """Whether the detector finds exactly the scene's objects in an image (nothing missing or extra).

    Args:
        image: a float tensor ``[3, H, W]`` in [-1, 1], a uint8 array or a PIL image.
        scene: the prompted objects (all four attributes given).
        detect_kwargs: passed to :func:`detect_objects`.

    Returns:
        ``match`` (bool), ``objects_found`` (prompted objects present with all four attributes),
        ``num_objects``, ``missing`` and ``extra`` (attribute tuples), ``detected`` (the detections).
    """
    detected = detect_objects(image, **detect_kwargs)
    want = Counter(scene_key(o) for o in scene)
    got = Counter(scene_key(o) for o in detected)
    missing = want - got
    extra = got - want
    return {
        "match": not missing and not extra,
        "objects_found": sum((want & got).values()),
        "num_objects": len(scene),
        "missing": sorted(missing.elements()),
        "extra": sorted(extra.elements()),
        "detected": detected,
    }


def image_matches_caption(image: Any, caption: str, lang: str | None = None, **detect_kwargs: Any) -> dict[str, Any]:
    """Whether an image shows exactly what a free-text prompt asks for.

    Only the attributes the prompt states are checked (a prompt "a red circle" accepts a red circle
    of any size anywhere), but the number of objects must match.

    Returns:
        ``match`` (bool), ``objects_found``, ``num_objects`` (prompted), ``num_detected``,
        ``mentions`` (parsed prompt), ``detected``.
    """
    mentions = parse_caption(caption, lang)
    detected = detect_objects(image, **detect_kwargs)
    found = 0
    if mentions and detected:
        # maximise the number of prompted objects fully satisfied (attributes the prompt omits are free)
        fits = np.array(
            [[all(m[a] is None or m[a] == d[a] for a in ATTRIBUTES) for d in detected] for m in mentions], dtype=float
        )
        ri, ci = linear_sum_assignment(-fits)
        found = int(fits[ri, ci].sum())
    return {
        "match": found == len(mentions) and len(detected) == len(mentions),
        "objects_found": found,
        "num_objects": len(mentions),
        "num_detected": len(detected),
        "mentions": mentions,
        "detected": detected,
    }
