"""The font grids write their captions in: one that has CJK glyphs when the machine has one.

PIL's built-in bitmap font has Latin glyphs only, so Chinese captions came out as empty boxes. A
TrueType font with CJK coverage is looked up once (``VILGKIT_CAPTION_FONT`` first, then fontconfig's
answer for Chinese, then a few Debian paths); the Makefile's set-up and ``.ci/run`` install
Debian's ``fonts-wqy-microhei`` for this. Without one, the built-in font is used and a warning says why
Chinese text will not render.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import warnings

from PIL import ImageFont

CAPTION_FONT_PX = 11  # fits the grids' 12-pixel caption lines
_KNOWN_CJK_FONTS = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
)


def cjk_font_path() -> str | None:
    """Path of a font file with CJK glyphs, or ``None`` when the machine has none."""
    override = os.environ.get("VILGKIT_CAPTION_FONT")
    if override:
        return override if os.path.isfile(override) else None
    if shutil.which("fc-match"):
        try:
            found = subprocess.run(
                ["fc-match", "-f", "%{file}", ":lang=zh"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            found = ""
        # fc-match always answers with *some* font; only trust it when it is a known CJK family file.
        if found and os.path.isfile(found) and any(key in found.lower() for key in ("wqy", "cjk", "han", "hei")):
            return found
    return next((path for path in _KNOWN_CJK_FONTS if os.path.isfile(path)), None)


@functools.lru_cache(maxsize=1)
def caption_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """The caption font: a CJK TrueType font when found, else PIL's built-in font (with a warning)."""
    path = cjk_font_path()
    if path is not None:
        try:
            return ImageFont.truetype(path, CAPTION_FONT_PX)
        except OSError:
            pass
    warnings.warn(
        "no font with CJK glyphs found (install fonts-wqy-microhei or set VILGKIT_CAPTION_FONT): "
        "Chinese captions in grids will show as boxes",
        stacklevel=2,
    )
    return ImageFont.load_default()
