"""The Figure 2 pictures show exactly the oracle masks."""

from __future__ import annotations

from PIL import Image

from vilgkit.layout import Layout
from vilgkit_attention.figures import CELL, EMPTY_RGB, IMAGE_RGB, TEXT_RGB, render_figure2
from vilgkit_attention.masks import build_allowed


def test_render_figure2_pixels_match_masks(tmp_path):
    paths = render_figure2(tmp_path)
    assert sorted(p.name for p in paths) == sorted(
        f"{k}_{d}.png" for k in ("dense", "row", "column", "conv") for d in ("text2image", "image2text")
    )
    for kind in ("row", "conv"):
        layout = Layout.image_to_text(4, 4, 6)
        allowed = build_allowed(layout, kind, 3)
        pic = Image.open(tmp_path / f"{kind}_image2text.png").convert("RGB")
        assert pic.size == (22 * CELL + 1, 22 * CELL + 1)
        for q in range(22):
            for k in range(22):
                rgb = pic.getpixel((k * CELL + CELL // 2, q * CELL + CELL // 2))
                want = (IMAGE_RGB if k < 16 else TEXT_RGB) if allowed[q, k] else EMPTY_RGB
                assert rgb == want, (kind, q, k)
