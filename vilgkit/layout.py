"""Sequence layouts: where each segment (text or image) sits in the generator's input stream.

The generator always sees ``[source segments..., target segment]``:

* text→image: ``[text | image]``        (text source, image target)
* image→text: ``[image | text]``        (image source, caption target)
* VQA:        ``[image, question | answer]``

Attention patterns read a ``Layout`` to build masks (``AttentionPattern.allowed``), so the mask
definition of docs/architecture.md §2 is expressed once, against positions, independent of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SegmentKind = Literal["text", "image"]


@dataclass(frozen=True)
class Segment:
    """One contiguous run of positions.

    Args:
        kind: ``"text"`` or ``"image"``.
        length: number of positions; for images ``height * width``.
        grid: ``(height, width)`` of an image segment in codes (raster order); ``None`` for text.
    """

    kind: SegmentKind
    length: int
    grid: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("text", "image"):
            raise ValueError(f"segment kind must be 'text' or 'image', got {self.kind!r}")
        if self.kind == "image":
            if self.grid is None or self.grid[0] * self.grid[1] != self.length:
                raise ValueError(f"image segment needs grid with h*w == length, got {self.grid}, {self.length}")
        elif self.grid is not None:
            raise ValueError("text segments have no grid")
        if self.length <= 0:
            raise ValueError(f"segment length must be positive, got {self.length}")

    @staticmethod
    def text(length: int) -> Segment:
        return Segment("text", length)

    @staticmethod
    def image(height: int, width: int) -> Segment:
        return Segment("image", height * width, (height, width))


@dataclass(frozen=True)
class Layout:
    """Source segments followed by one target segment.

    Source positions are bidirectional (subject to the pattern over image keys); target positions
    are causal. Offsets are in positions from the start of the stream.
    """

    source: tuple[Segment, ...]
    target: Segment

    @property
    def segments(self) -> tuple[Segment, ...]:
        return (*self.source, self.target)

    @property
    def length(self) -> int:
        return sum(s.length for s in self.segments)

    @property
    def source_length(self) -> int:
        return sum(s.length for s in self.source)

    def offsets(self) -> list[int]:
        """Start position of every segment, in ``segments`` order."""
        out, pos = [], 0
        for seg in self.segments:
            out.append(pos)
            pos += seg.length
        return out

    @property
    def direction(self) -> str:
        """``"text2image"`` when the target is an image, else ``"image2text"``."""
        return "text2image" if self.target.kind == "image" else "image2text"

    @staticmethod
    def text_to_image(text_len: int, height: int, width: int) -> Layout:
        return Layout((Segment.text(text_len),), Segment.image(height, width))

    @staticmethod
    def image_to_text(height: int, width: int, text_len: int) -> Layout:
        return Layout((Segment.image(height, width),), Segment.text(text_len))

    @staticmethod
    def vqa(height: int, width: int, question_len: int, answer_len: int) -> Layout:
        return Layout((Segment.image(height, width), Segment.text(question_len)), Segment.text(answer_len))
