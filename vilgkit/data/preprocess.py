"""Preprocessing and data-quality accounting shared by the real-data readers.

* :func:`load_image`: decode bytes/paths, resize the short side and centre-crop (paper §4.1:
  256×256 centre crops), return ``float [3, S, S]`` in [-1, 1].
* :class:`SkipStats`: every rejected sample is counted under a reason (``undecodable_image``,
  ``missing_image``, ``missing_caption``, ``empty_caption``, ``long_caption``, ``corrupt_shard``,
  ``bad_row``…); above ``max_skip_fraction`` of the samples seen the reader stops with a
  :class:`DataQualityError` naming the shard or file where it happened.
* :func:`caption_sample`: the sample dict both readers return.
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vilgkit.data.shapes.language import detect_language
from vilgkit.errors import VilgkitError


class DataQualityError(VilgkitError):
    """Too many samples were skipped; the message names the source and the counts per reason."""


class SkipStats:
    """Counts of samples seen, kept and skipped (per reason and per source).

    Args:
        max_skip_fraction: allowed fraction of skipped samples among those seen.
        min_seen: the fraction is only checked after this many samples (a bad first sample must
            not stop a run on its own).
    """

    def __init__(self, max_skip_fraction: float = 0.05, min_seen: int = 50) -> None:
        if not 0.0 <= max_skip_fraction <= 1.0:
            raise ValueError(f"max_skip_fraction must be in [0, 1], got {max_skip_fraction}")
        self.max_skip_fraction = float(max_skip_fraction)
        self.min_seen = int(min_seen)
        self.seen = 0
        self.reasons: Counter[str] = Counter()
        self.by_source: Counter[str] = Counter()

    @property
    def skipped(self) -> int:
        return sum(self.reasons.values())

    def ok(self) -> None:
        """Record a kept sample."""
        self.seen += 1

    def skip(self, reason: str, source: str) -> None:
        """Record a skipped sample; raises :class:`DataQualityError` above the allowed fraction."""
        self.seen += 1
        self.reasons[reason] += 1
        self.by_source[source] += 1
        if self.seen >= self.min_seen and self.skipped > self.max_skip_fraction * self.seen:
            raise DataQualityError(
                f"{self.skipped} of {self.seen} samples skipped ({self.skipped / self.seen:.1%} > "
                f"max_skip_fraction {self.max_skip_fraction:.1%}); last at {source} ({reason}). "
                f"By reason: {dict(self.reasons)}; worst sources: {dict(self.by_source.most_common(3))}"
            )

    def counts(self) -> dict[str, int]:
        """Flat counters for logging: ``seen``, ``kept``, ``skipped``, ``skipped/<reason>``."""
        out = {"seen": self.seen, "kept": self.seen - self.skipped, "skipped": self.skipped}
        out.update({f"skipped/{r}": n for r, n in sorted(self.reasons.items())})
        return out


def open_image(source: bytes | str | Path) -> Image.Image:
    """Decode an image fully (so truncated files fail here, not later) and convert it to RGB."""
    img = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
    img.load()
    return img.convert("RGB")


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize so the short side is ``size`` (bicubic, antialiased), then crop the centre square."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image → float ``[3, H, W]`` in [-1, 1]."""
    array = np.array(img, dtype=np.uint8)
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def load_image(source: bytes | str | Path, size: int) -> torch.Tensor:
    """Decode, resize the short side to ``size``, centre-crop, → ``float [3, size, size]`` in [-1, 1]."""
    return pil_to_tensor(resize_center_crop(open_image(source), size))


def check_caption(caption: Any, max_chars: int) -> tuple[str | None, str | None]:
    """``(cleaned caption, None)`` if usable, else ``(None, reason)``."""
    if caption is None:
        return None, "missing_caption"
    if isinstance(caption, bytes):
        try:
            caption = caption.decode("utf-8")
        except UnicodeDecodeError:
            return None, "undecodable_caption"
    text = " ".join(str(caption).split())
    if not text:
        return None, "empty_caption"
    if len(text) > max_chars:
        return None, "long_caption"
    return text, None


def caption_sample(image: torch.Tensor, caption: str, key: str, **extra: Any) -> dict[str, Any]:
    """One image-caption sample as the real-data readers yield it (no VQA fields: empty question and
    answer), its language detected from the caption; ``extra`` entries come before ``key``."""
    text = {"caption": caption, "question": "", "answer": "", "lang": detect_language(caption)}
    return {"image": image, **text, **extra, "key": key}
