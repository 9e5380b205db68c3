"""Pictures in and out: user images → model tensors, model output → PIL images and captioned grids.

* images (paths, PIL images, ``uint8`` arrays or ``[3, H, W]`` tensors in [-1, 1]) become one float
  tensor ``[B, 3, S, S]`` in [-1, 1], centre-cropped to a square and resized to the model's size;
* sampled images become PIL images and picture grids with optional captions.

Shapes (dimension key): B batch, S image side, H/W image height/width.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, UnidentifiedImageError

from vilgkit.caption_font import caption_font
from vilgkit.errors import InputError

ImageInput = Any  # str | Path | PIL.Image.Image | np.ndarray | torch.Tensor


def load_images(images: Sequence[ImageInput], size: int) -> torch.Tensor:
    """Read images into ``Float[B, 3, size, size]`` in [-1, 1].

    Paths are opened with PIL (an unreadable or missing file is an :class:`InputError` naming it);
    non-square images are centre-cropped to a square, then resized (bicubic) to ``size``. Arrays are
    ``H×W×3`` ``uint8``; tensors are ``[3, H, W]`` floats in [-1, 1] (used as they are when already
    ``size × size``).
    """
    if isinstance(images, (str, Path, Image.Image, np.ndarray)) or (
        isinstance(images, torch.Tensor) and images.dim() == 3
    ):
        raise InputError("expected a list of images, got a single image; wrap it in a list")
    if len(images) == 0:
        raise InputError("no images given")
    out = [_one_image(img, size, i) for i, img in enumerate(images)]
    return torch.stack(out)


def _one_image(img: ImageInput, size: int, index: int) -> torch.Tensor:
    if isinstance(img, torch.Tensor):
        if img.dim() != 3 or img.shape[0] != 3:
            raise InputError(f"image {index}: a tensor image must be [3, H, W], got {tuple(img.shape)}")
        if not torch.isfinite(img).all():
            raise InputError(f"image {index}: the tensor holds NaN or infinite values")
        if tuple(img.shape[1:]) == (size, size):
            return img.float().clamp(-1, 1)
        img = to_pil(img[None])[0]
    elif isinstance(img, (str, Path)):
        path = Path(img)
        if not path.is_file():
            raise InputError(f"image {index}: file not found: {path}")
        try:
            with Image.open(path) as opened:
                opened.load()
                img = opened.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise InputError(f"image {index}: cannot read {path}: {err}") from None
    elif isinstance(img, np.ndarray):
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise InputError(f"image {index}: an array image must be H×W×3 uint8, got {img.shape} {img.dtype}")
        img = Image.fromarray(img)
    elif isinstance(img, Image.Image):
        img = img.convert("RGB")
    else:
        raise InputError(
            f"image {index}: unsupported type {type(img).__name__} (use a path, PIL image, array or tensor)"
        )
    w, h = img.size
    side = min(w, h)
    if (w, h) != (side, side):
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if side != size:
        img = img.resize((size, size), Image.BICUBIC)
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float()
    return arr / 127.5 - 1.0


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """``Float[B, 3, H, W]`` in [-1, 1] → PIL RGB images (values outside are clipped)."""
    arr = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).cpu().numpy()) for a in arr]


def make_grid(
    images: Sequence[Image.Image],
    ncol: int,
    captions: Sequence[str] | None = None,
    *,
    scale: int = 2,
    caption_width: int | None = None,
) -> Image.Image:
    """Lay images out in a grid (row-major), each optionally with a caption written under it.

    Args:
        images: equally sized PIL images.
        ncol: images per row.
        captions: one string per image, wrapped to the cell width.
        scale: integer up-scaling (nearest) so small images stay visible.
        caption_width: cell width in pixels for captions (default: the scaled image width, at least 160).
    """
    if not images:
        raise ValueError("make_grid needs at least one image")
    w, h = images[0].size
    w, h = w * scale, h * scale
    cell_w = max(w, caption_width or (160 if captions else w))
    font = caption_font() if captions else None
    lines_per = [_wrap(_printable(c), cell_w, font) for c in captions] if captions else [[] for _ in images]
    text_h = (max(len(lines) for lines in lines_per) * 12 + 4) if captions else 0
    nrow = (len(images) + ncol - 1) // ncol
    pad = 4
    grid = Image.new("RGB", (ncol * (cell_w + pad) + pad, nrow * (h + text_h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for i, img in enumerate(images):
        r, c = divmod(i, ncol)
        x, y = pad + c * (cell_w + pad), pad + r * (h + text_h + pad)
        grid.paste(img.resize((w, h), Image.NEAREST), (x + (cell_w - w) // 2, y))
        for j, line in enumerate(lines_per[i]):
            draw.text((x, y + h + 2 + 12 * j), line, fill="black", font=font)
    return grid


def _printable(text: str) -> str:
    """Control characters (``\\r``, ``\\x00``…) as spaces: the text layout engine fails on some of them."""
    return "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in text)


def _wrap(text: str, width_px: int, font) -> list[str]:
    """Greedy wrap by the font's measured widths: at spaces, or per character for text without spaces (CJK)."""
    words = text.split(" ") if " " in text else list(text)
    joiner = " " if " " in text else ""
    lines, cur = [], ""
    for word in words:
        cand = f"{cur}{joiner}{word}" if cur else word
        if font.getlength(cand) > width_px and cur:
            lines.append(cur)
            cur = word
        else:
            cur = cand
    if cur:
        lines.append(cur)
    return lines
