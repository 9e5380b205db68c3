"""Pictures of the attention masks (paper Fig. 2): one PNG per pattern and direction.

``python -m vilgkit_attention.figures docs/attention`` regenerates the pictures in the docs. Each
cell is one (query row, key column) pair: coloured where attention is allowed (blue for text keys,
orange for image keys), white where it is not; a dark line separates source from target.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from vilgkit.layout import Layout
from vilgkit_attention.masks import build_allowed, image_segment

CELL = 16
TEXT_RGB, IMAGE_RGB, EMPTY_RGB, GRID_RGB, SPLIT_RGB = (
    (66, 110, 200),
    (240, 150, 40),
    (255, 255, 255),
    (200, 200, 200),
    (0, 0, 0),
)


def mask_image(allowed: torch.Tensor, layout: Layout, cell: int = CELL) -> Image.Image:
    """Render ``Bool[N, N]`` as an RGB picture, ``cell`` pixels per entry."""
    n = allowed.shape[0]
    img_off, h, w, _ = image_segment(layout)
    is_image = torch.zeros(n, dtype=torch.bool)
    is_image[img_off : img_off + h * w] = True
    pic = Image.new("RGB", (n * cell + 1, n * cell + 1), EMPTY_RGB)
    draw = ImageDraw.Draw(pic)
    for q in range(n):
        for k in range(n):
            if allowed[q, k]:
                colour = IMAGE_RGB if is_image[k] else TEXT_RGB
                draw.rectangle([k * cell, q * cell, (k + 1) * cell, (q + 1) * cell], fill=colour)
    for i in range(n + 1):
        draw.line([(0, i * cell), (n * cell, i * cell)], fill=GRID_RGB)
        draw.line([(i * cell, 0), (i * cell, n * cell)], fill=GRID_RGB)
    for off in layout.offsets()[1:]:  # segment boundaries
        width = 3 if off == layout.source_length else 1
        draw.line([(0, off * cell), (n * cell, off * cell)], fill=SPLIT_RGB, width=width)
        draw.line([(off * cell, 0), (off * cell, n * cell)], fill=SPLIT_RGB, width=width)
    return pic


def render_figure2(
    out_dir: str | Path, text_len: int = 6, height: int = 4, width: int = 4, kernel_size: int = 3
) -> list[Path]:
    """Write ``{kind}_{direction}.png`` for dense/row/column/conv in both directions.

    Returns:
        The written paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layouts = {
        "text2image": Layout.text_to_image(text_len, height, width),
        "image2text": Layout.image_to_text(height, width, text_len),
    }
    written = []
    for kind in ("dense", "row", "column", "conv"):
        for name, layout in layouts.items():
            path = out / f"{kind}_{name}.png"
            mask_image(build_allowed(layout, kind, kernel_size), layout).save(path)
            written.append(path)
    return written


if __name__ == "__main__":
    for p in render_figure2(sys.argv[1] if len(sys.argv) > 1 else "docs/attention"):
        print(p)
