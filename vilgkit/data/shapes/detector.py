"""Read Shapes attributes back from a rendered or generated image (no learned weights).

Steps: snap every pixel to the nearest palette colour (or the background); per colour, split the
mask into 4-connected blobs, fill their holes (no Shapes object has one, so holes are noise) and
drop blobs too small to be an object; then, per blob,

* **position**: the grid cell containing the centre of its bounding box;
* **size**: its area compared, in log scale, with the area the renderer gives that shape at the
  small and at the large radius for this image size (the two differ ≈2.7×, radius jitter moves an
  area by only ±8 %, and counting rasterised pixels includes the renderer's boundary bias);
* **shape**: the blob's mask, normalised to its bounding box and area-resampled to ``T×T``, is
  compared with each shape's template normalised the same way; the nearest (mean absolute
  difference) wins. Normalising by the bounding box makes this a comparison of fill geometry
  (fill ratio, where the corners and notches are), independent of scale and jitter.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from vilgkit.data.shapes.world import BACKGROUND, PALETTE, POSITIONS, RADIUS, SHAPES, STAR_INNER, draw_shape

#: side of the normalised masks compared for shape classification
TEMPLATE_SIZE = 20
#: blobs smaller than this fraction of the smallest object's area (a small star) are noise
MIN_AREA_FRACTION = 0.3

_COLOR_NAMES = ("background", *PALETTE)
_COLOR_TABLE = np.array([BACKGROUND, *PALETTE.values()], dtype=np.int32)  # [K+1, 3]


def as_uint8_image(image: Any) -> np.ndarray:
    """Accept a float tensor ``[3, H, W]`` in [-1, 1], a uint8 tensor/array ``[3,H,W]``/``[H,W,3]``
    or a PIL image; return ``uint8 [H, W, 3]``."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    try:
        import torch

        if isinstance(image, torch.Tensor):
            t = image.detach().cpu()
            if t.dim() != 3:
                raise ValueError(f"expected one image [3, H, W], got shape {tuple(t.shape)}")
            if t.dtype.is_floating_point:
                t = ((t.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            image = t.numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    array = np.asarray(image)
    if array.ndim != 3:
        raise ValueError(f"expected one RGB image, got an array of shape {array.shape}")
    if array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    if array.shape[-1] != 3:
        raise ValueError(f"expected 3 colour channels, got shape {array.shape}")
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating):
            raise ValueError("float arrays are ambiguous ([0,1] or [-1,1]?); pass a torch tensor in [-1, 1] or uint8")
        array = np.clip(array, 0, 255).astype(np.uint8)
    return array


def snap_to_palette(image: Any) -> np.ndarray:
    """Label map ``int [H, W]``: 0 = background, ``1 + i`` = the i-th palette colour (nearest in RGB)."""
    array = as_uint8_image(image).astype(np.int32)
    d = ((array[:, :, None, :] - _COLOR_TABLE[None, None]) ** 2).sum(-1)  # [H, W, K+1]
    return d.argmin(-1)


@lru_cache(maxsize=64)
def _templates(image_size: int) -> np.ndarray:
    """``[num_shapes, 3, T, T]`` normalised masks per shape: the ideal shape (rendered large) and
    the shape rasterised at this image size at the small and at the large radius (small renders
    are blocky in a shape-specific way; comparing against them keeps 32–48 px images usable)."""
    out = []
    for shape in SHAPES:
        per_shape = []
        for side, r in (
            (240, 100.0),
            *((image_size // 3 + 4, RADIUS[s] * image_size / 3.0) for s in ("small", "large")),
        ):
            img = Image.new("L", (side, side), 0)
            draw_shape(ImageDraw.Draw(img), shape, side / 2, side / 2, r, 255)
            per_shape.append(_normalise(np.asarray(img) > 0))
        out.append(np.stack(per_shape))
    return np.stack(out)


def _normalise(mask: np.ndarray) -> np.ndarray:
    """Crop a boolean mask to its bounding box and area-resample it to ``T×T`` in [0, 1]."""
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    img = Image.fromarray(crop.astype(np.uint8) * 255)
    return np.asarray(img.resize((TEMPLATE_SIZE, TEMPLATE_SIZE), Image.BOX), dtype=np.float32) / 255.0


def classify_shape(mask: np.ndarray, image_size: int = 256) -> tuple[str, float]:
    """Nearest shape for a boolean blob mask, and its distance (0 = a perfect match).

    Args:
        mask: the blob (any crop containing it).
        image_size: side of the image it came from (selects the rasterised templates).
    """
    dist = np.abs(_templates(int(image_size)) - _normalise(mask)[None, None]).mean(axis=(2, 3)).min(axis=1)
    k = int(dist.argmin())
    return SHAPES[k], float(dist[k])


@lru_cache(maxsize=64)
def _nominal_areas(image_size: int) -> dict[str, tuple[float, float]]:
    """Rasterised pixel area of each shape at the small and the large radius (no jitter)."""
    side = image_size // 3 + 4
    out = {}
    for shape in SHAPES:
        areas = []
        for size in ("small", "large"):
            img = Image.new("L", (side, side), 0)
            draw_shape(ImageDraw.Draw(img), shape, side / 2, side / 2, RADIUS[size] * image_size / 3.0, 255)
            areas.append(float((np.asarray(img) > 0).sum()))
        out[shape] = (areas[0], areas[1])
    return out


def _smallest_object_area(image_size: int) -> float:
    """Area in pixels of the smallest possible object (a small star at minimum jitter)."""
    r = RADIUS["small"] * 0.96 * image_size / 3.0
    return 5.0 * r * (r * STAR_INNER) * np.sin(np.pi / 5)


def detect_objects(image: Any, *, min_area_fraction: float = MIN_AREA_FRACTION) -> list[dict[str, Any]]:
    """Find the Shapes objects in one image.

    Args:
        image: see :func:`as_uint8_image` (square images; any side ≥ 12 px).
        min_area_fraction: blobs below this fraction of the smallest object's area are ignored.

    Returns:
        Objects in raster order of their cells, each with ``shape``, ``color``, ``size``,
        ``position``, ``row``, ``col`` (as in a scene), plus ``area`` (pixels), ``bbox``
        ``(x0, y0, x1, y1)`` (exclusive end) and ``shape_distance`` (template mismatch, lower is surer).
    """
    labels = snap_to_palette(image)
    height, width = labels.shape
    if height != width:
        raise ValueError(f"Shapes images are square, got {height}x{width}")
    cell = width / 3.0
    min_area = min_area_fraction * _smallest_object_area(width)
    found = []
    for color_index in np.unique(labels):
        if color_index == 0:
            continue
        blobs, count = ndimage.label(labels == color_index)
        for k, box in enumerate(ndimage.find_objects(blobs), start=1):
            if box is None:
                continue
            blob = ndimage.binary_fill_holes(blobs[box] == k)
            area = int(blob.sum())
            if area < min_area:
                continue
            y0, y1, x0, x1 = box[0].start, box[0].stop, box[1].start, box[1].stop
            row = min(2, int(((y0 + y1) / 2.0) // cell))
            col = min(2, int(((x0 + x1) / 2.0) // cell))
            shape, distance = classify_shape(blob, width)
            small, large = _nominal_areas(width)[shape]
            is_large = np.log(area) >= 0.5 * (np.log(small) + np.log(large))
            found.append(
                {
                    "shape": shape,
                    "color": _COLOR_NAMES[int(color_index)],
                    "size": "large" if is_large else "small",
                    "position": POSITIONS[3 * row + col],
                    "row": row,
                    "col": col,
                    "area": area,
                    "bbox": (int(x0), int(y0), int(x1), int(y1)),
                    "shape_distance": distance,
                }
            )
    found.sort(key=lambda o: (3 * o["row"] + o["col"], -o["area"]))
    return found
