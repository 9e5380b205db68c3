"""The Shapes world: attributes, scene sampling and alias-free rendering.

A scene is 1–3 objects on a plain black background. Each object has a shape, a colour, a cell of a
3×3 grid (distinct per object) and a size. Rendering is aliased on purpose: every pixel is either the
background or exactly one palette colour, so the detector (``detector.py``) can segment by colour
without guessing, and a generated image can be snapped back to the palette.

Geometry, in units of one grid cell ``c = image_size / 3``: an object's centre is its cell centre
jittered by at most ``JITTER·c`` per axis; its radius is ``RADIUS[size]·c`` scaled by at most
``±SIZE_JITTER``. The largest object reaches ``0.38·1.04 + 0.05 ≈ 0.445·c`` from its cell centre, so
two objects in neighbouring cells are always at least ``0.11·c`` (≈2.3 px at 64 px) apart and never
merge, even when they share a colour.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

#: the shapes, in a fixed order (their index is the class id everywhere)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
#: colour name → RGB; pairwise RGB distances ≥ 150 and ≥ 250 from the background
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (20, 190, 40),
    "blue": (40, 70, 255),
    "yellow": (245, 225, 20),
    "purple": (170, 40, 220),
    "cyan": (20, 220, 220),
    "white": (250, 250, 250),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
BACKGROUND: tuple[int, int, int] = (0, 0, 0)
#: grid cells in raster order: index = 3·row + col
POSITIONS: tuple[str, ...] = (
    "top left",
    "top",
    "top right",
    "left",
    "centre",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
SIZES: tuple[str, ...] = ("small", "large")
#: radius as a fraction of a cell, per size
RADIUS: dict[str, float] = {"small": 0.23, "large": 0.38}
SIZE_JITTER = 0.04
JITTER = 0.05
#: inner/outer radius of the five-pointed star (0.42 keeps its arms thick enough at small sizes)
STAR_INNER = 0.42
#: half side of the square relative to the radius (so a square is not much heavier than a circle)
SQUARE_HALF = 0.85

#: default compositional hold-out: one colour–shape pair per shape, never seen in training
DEFAULT_HELD_OUT: tuple[tuple[str, str], ...] = (
    ("red", "triangle"),
    ("green", "star"),
    ("blue", "square"),
    ("yellow", "circle"),
)


def check_pairs(pairs: Any) -> list[tuple[str, str]]:
    """Validate a list of ``(colour, shape)`` pairs; a clear error names the bad entry."""
    out = []
    for pair in pairs:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"held-out pairs are [colour, shape] lists, got {pair!r}")
        color, shape = str(pair[0]), str(pair[1])
        if color not in PALETTE:
            raise ValueError(f"unknown colour {color!r} in held-out pair; colours: {', '.join(COLORS)}")
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r} in held-out pair; shapes: {', '.join(SHAPES)}")
        out.append((color, shape))
    return out


def sample_scene(
    rng: np.random.Generator,
    pairs: list[tuple[str, str]],
    *,
    min_objects: int = 1,
    max_objects: int = 3,
    required: list[tuple[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """Draw one scene.

    Args:
        rng: the per-sample generator (determinism comes from how it is seeded).
        pairs: the colour–shape pairs objects may take.
        min_objects, max_objects: object count range (inclusive, at most 9).
        required: when given, one object's colour–shape pair is drawn from these instead (the
            compositional test split uses this so that every test scene shows a held-out pair).

    Returns:
        Objects sorted in raster order of their cells; each a dict with ``shape``, ``color``,
        ``size``, ``position`` (a name from :data:`POSITIONS`), ``row``, ``col`` and the exact
        geometry ``cx``, ``cy``, ``radius`` as fractions of the image side.
    """
    n = int(rng.integers(min_objects, max_objects + 1))
    cells = rng.choice(9, size=n, replace=False)
    objects = []
    for i, cell in enumerate(cells):
        pool = required if (required and i == 0) else pairs
        color, shape = pool[int(rng.integers(len(pool)))]
        size = SIZES[int(rng.integers(2))]
        row, col = divmod(int(cell), 3)
        jx, jy = rng.uniform(-JITTER, JITTER, size=2)
        scale = 1.0 + rng.uniform(-SIZE_JITTER, SIZE_JITTER)
        objects.append(
            {
                "shape": shape,
                "color": color,
                "size": size,
                "position": POSITIONS[int(cell)],
                "row": row,
                "col": col,
                "cx": float((col + 0.5 + jx) / 3.0),
                "cy": float((row + 0.5 + jy) / 3.0),
                "radius": float(RADIUS[size] * scale / 3.0),
            }
        )
    objects.sort(key=lambda o: 3 * o["row"] + o["col"])
    return objects


def shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Vertices of ``shape`` centred at ``(cx, cy)`` with radius ``r`` (pixel units, y down)."""
    if shape == "square":
        h = r * SQUARE_HALF
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        # apex up; base and apex at ±r so its bounding box is a 2r square like the circle's
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "star":
        pts = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * STAR_INNER
            angle = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return pts
    raise ValueError(f"unknown shape {shape!r}; shapes: {', '.join(SHAPES)}")


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: Any) -> None:
    """Draw one filled, aliased shape. Coordinates are continuous (pixel i spans [i, i+1))."""
    # PIL addresses pixel i by the integer i, i.e. the continuous point i + 0.5 is pixel i's centre.
    cx, cy = cx - 0.5, cy - 0.5
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(shape_polygon(shape, cx, cy, r), fill=fill)


def render_scene(scene: list[dict[str, Any]], image_size: int) -> np.ndarray:
    """Render a scene to ``uint8 [H, W, 3]`` (aliased: only palette colours and the background)."""
    if image_size < 12:
        raise ValueError(f"image_size must be at least 12 pixels, got {image_size}")
    img = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for obj in scene:
        draw_shape(
            draw,
            obj["shape"],
            obj["cx"] * image_size,
            obj["cy"] * image_size,
            obj["radius"] * image_size,
            PALETTE[obj["color"]],
        )
    return np.array(img)  # a writable copy (torch.from_numpy warns on read-only buffers)


def to_tensor_image(array: np.ndarray):
    """``uint8 [H, W, 3]`` → float tensor ``[3, H, W]`` in ``[-1, 1]``."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float()
    return t.div_(127.5).sub_(1.0)


def scene_key(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    """The four attributes that identify an object (what scorers compare)."""
    return (obj["shape"], obj["color"], obj["position"], obj["size"])
