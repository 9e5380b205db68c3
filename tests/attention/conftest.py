"""Shared helpers for the attention tests: an independent, loop-based oracle of docs/architecture.md §2."""

from __future__ import annotations

import pytest
import torch

import vilgkit_attention  # noqa: F401  (registers the patterns)
from vilgkit.layout import Layout


def reference_allowed(layout: Layout, kind: str, kernel_size: int = 3) -> torch.Tensor:
    """docs/architecture.md §2 written out position by position (deliberately slow and literal)."""
    n_total, src = layout.length, layout.source_length
    seg_of: list[tuple[str, int, tuple[int, int] | None, int]] = []  # (kind, index in segment, grid, seg start)
    for off, seg in zip(layout.offsets(), layout.segments):
        for i in range(seg.length):
            seg_of.append((seg.kind, i, seg.grid, off))
    out = torch.zeros(n_total, n_total, dtype=torch.bool)
    for q in range(n_total):
        q_kind, q_i, q_grid, q_off = seg_of[q]
        q_target = q >= src
        for k in range(n_total):
            k_kind, k_i, _, k_off = seg_of[k]
            k_target = k >= src
            if k_target and not q_target:
                continue  # the source never sees the target
            if k_target and k > q:
                continue  # targets are causal
            if q_kind == "image" and k_kind == "image":
                assert q_grid is not None
                w = q_grid[1]
                (qr, qc), (kr, kc) = divmod(q_i, w), divmod(k_i, w)
                ok = {
                    "dense": True,
                    "row": qr == kr,
                    "column": qc == kc,
                    "conv": abs(qr - kr) <= kernel_size // 2 and abs(qc - kc) <= kernel_size // 2,
                }[kind]
                if not ok:
                    continue
            out[q, k] = True
    return out


LAYOUTS = {
    "text2image": Layout.text_to_image(5, 4, 6),
    "image2text": Layout.image_to_text(5, 4, 6),
    "vqa": Layout.vqa(4, 5, 3, 4),
}


@pytest.fixture(params=list(LAYOUTS), ids=list(LAYOUTS))
def layout(request) -> Layout:
    return LAYOUTS[request.param]
