"""The reference masks of docs/architecture.md §2, built once per (layout, image pattern) and cached.

Every pattern in this plugin is "the UniLM-style source/target mask" with one thing varying: which
image keys an image query may see (``dense``, ``row``, ``column`` or ``conv``). So the mask builder
takes the image-key pattern as a parameter and everything else (text keys, causality, the VQA
question) is written once here.

Dimension key: N sequence length, n image positions (h*w), h image rows, w image columns.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal, NamedTuple

import torch

from vilgkit.layout import Layout

ImageKind = Literal["dense", "row", "column", "conv"]
IMAGE_KINDS: tuple[str, ...] = ("dense", "row", "column", "conv")


class SparseMask(NamedTuple):
    """One layer's mask, as the kernels take it: the image pattern ``kind`` (with the conv window
    ``kernel_size``) on ``layout``; :func:`build_allowed` of the same three is its oracle."""

    layout: Layout
    kind: str
    kernel_size: int


def check_kind(kind: str, kernel_size: int) -> None:
    """Raise a clear ``ValueError`` for an unknown image pattern or a bad conv kernel."""
    if kind not in IMAGE_KINDS:
        raise ValueError(f"unknown image attention kind {kind!r}; expected one of {IMAGE_KINDS}")
    if kind == "conv" and (kernel_size < 1 or kernel_size % 2 == 0):
        raise ValueError(f"conv attention needs an odd kernel_size >= 1, got {kernel_size}")


def image_segment(layout: Layout) -> tuple[int, int, int, bool]:
    """``(offset, h, w, is_target)`` of the layout's single image segment.

    Raises:
        ValueError: when the layout has no image or more than one (no vilgkit task uses that and
            the sparse patterns are defined for one image grid).
    """
    found = [(off, seg) for off, seg in zip(layout.offsets(), layout.segments) if seg.kind == "image"]
    if len(found) != 1:
        raise ValueError(f"attention patterns need exactly one image segment, layout has {len(found)}")
    off, seg = found[0]
    assert seg.grid is not None
    return off, seg.grid[0], seg.grid[1], seg is layout.target


def image_key_pattern(kind: str, h: int, w: int, kernel_size: int = 3) -> torch.Tensor:
    """Bool ``[n, n]``: which image keys an image query may see, before causality.

    Code k sits at row ``k // w``, column ``k % w`` (raster order).
    """
    check_kind(kind, kernel_size)
    idx = torch.arange(h * w)
    r, c = idx // w, idx % w
    if kind == "dense":
        return torch.ones(h * w, h * w, dtype=torch.bool)
    if kind == "row":
        return r[:, None] == r[None, :]
    if kind == "column":
        return c[:, None] == c[None, :]
    half = kernel_size // 2
    return ((r[:, None] - r[None, :]).abs() <= half) & ((c[:, None] - c[None, :]).abs() <= half)


@lru_cache(maxsize=256)
def _allowed_cpu(layout: Layout, kind: str, kernel_size: int) -> torch.Tensor:
    n_total = layout.length
    src = layout.source_length
    img_off, h, w, img_is_target = image_segment(layout)
    n = h * w
    allowed = torch.zeros(n_total, n_total, dtype=torch.bool)
    pos = torch.arange(n_total)
    is_image = (pos >= img_off) & (pos < img_off + n)
    is_source = pos < src

    # Source queries see source keys only; target queries see every source key.
    allowed[:src, :src] = True
    allowed[src:, :src] = True
    # Target queries: causal over the target segment.
    allowed[src:, src:] = torch.ones(n_total - src, n_total - src, dtype=torch.bool).tril()
    # Image queries: the pattern decides which image keys (text keys stay as above). A source
    # image is bidirectional within the pattern; a target image additionally stays causal.
    img = slice(img_off, img_off + n)
    pattern = image_key_pattern(kind, h, w, kernel_size)
    if img_is_target:
        pattern = pattern & torch.ones(n, n, dtype=torch.bool).tril()
    allowed[img, img] = pattern
    # Sanity: a source image query never sees the target (true by construction above).
    assert not allowed[is_image & is_source][:, ~is_source].any()
    return allowed


_DEVICE_CACHE: dict[tuple, torch.Tensor] = {}


def build_allowed(
    layout: Layout, kind: str, kernel_size: int = 3, device: torch.device | str | None = None
) -> torch.Tensor:
    """The oracle mask ``Bool[N, N]`` for ``layout`` with image pattern ``kind``; cached per device.

    The returned tensor is shared: treat it as read-only.
    """
    check_kind(kind, kernel_size)
    if kind != "conv":
        kernel_size = 0  # irrelevant: one cache entry, whatever the caller passed
    cpu = _allowed_cpu(layout, kind, kernel_size)
    if device is None or torch.device(device).type == "cpu":
        return cpu
    key = (layout, kind, kernel_size, str(torch.device(device)))
    if key not in _DEVICE_CACHE:
        if len(_DEVICE_CACHE) > 256:
            _DEVICE_CACHE.clear()
        _DEVICE_CACHE[key] = cpu.to(device)
    return _DEVICE_CACHE[key]
