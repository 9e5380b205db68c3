"""Grids render Chinese captions with real glyphs (issue 26), and wrap by measured width."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vilgkit.caption_font import caption_font, cjk_font_path
from vilgkit.pictures import make_grid


def _caption_pixels(caption: str) -> np.ndarray:
    grid = make_grid([Image.new("RGB", (16, 16), "white")], ncol=1, captions=[caption], scale=1)
    return np.asarray(grid.convert("L"))[20:, :]  # the caption band under the 16-px image


@pytest.mark.skipif(cjk_font_path() is None, reason="no CJK font on this machine (.ci/run installs fonts-wqy-microhei)")
def test_chinese_captions_render_distinct_glyphs():
    # Without CJK glyphs every character is the same empty box, so two different words look alike.
    cat, dog = _caption_pixels("红色的猫"), _caption_pixels("蓝色的狗")
    assert (cat < 128).sum() > 20 and (dog < 128).sum() > 20  # something was drawn
    assert not np.array_equal(cat, dog)


def test_long_captions_wrap_within_the_cell():
    font = caption_font()
    grid = make_grid([Image.new("RGB", (16, 16), "white")], ncol=1, captions=["一个红色的圆形在左上角" * 4], scale=1)
    single = make_grid([Image.new("RGB", (16, 16), "white")], ncol=1, captions=["一"], scale=1)
    assert grid.width == single.width  # the cell keeps its width ...
    assert grid.height > single.height  # ... and the caption takes more lines
    assert font.getlength("一") > 0
