"""A KV cache for decoding an image target one token at a time, laid out for the sparse patterns.

The generic way to decode a sparse layer is a *gather*: ``decode_keys`` gives the positions, and
``index_select`` copies those keys (and the padding mask) out of the cache at every step. This
cache avoids most of those copies by storing, next to the plain ``[B, H, N, D]`` cache, per-layer
buffers in which a step's keys are already contiguous:

* ``row`` layers: one buffer ``[B, H, S + w, D]`` = source keys, then the current image row. Image
  token (r, c) writes its key at ``S + c`` and attends the prefix ``:S + c + 1``: the source and its
  row so far (later columns of the previous row sit beyond the prefix and are never read);
* ``column`` layers: ``[B, H, w, S + h, D]``, one such buffer per image column;
* ``conv`` layers gather the window with indices precomputed once per layout (a window spans
  several rows); ``dense`` layers and text targets slice the plain cache.

The source keys are copied into the line buffers once, after the prefill. The padding mask of a
line buffer is the source's, then ``True``: target image tokens are never padding.
Attention itself is SDPA, so results equal the gather (tests check it against the oracle).

Dimension key: B batch, H heads, N sequence length, D head dim, S source length, h x w image grid.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vilgkit.interfaces import AttentionPattern
from vilgkit.layout import Layout
from vilgkit_attention.masks import image_segment


class SparseKVCache:
    """Per-layer KV cache of one decoding run (prefill the source, then one target position a step).

    Args:
        pattern: any :class:`AttentionPattern`; layers whose ``decode_keys`` are ``None`` slice.
        layout: the stream layout; line buffers are used only when the target is the image.
        num_layers, batch, heads, head_dim: cache geometry.
        key_padding_mask: ``Bool[B, N]``, True at padding (only source positions may be padding).
    """

    def __init__(self, pattern: AttentionPattern, layout: Layout, num_layers: int, batch: int, heads: int,
                 head_dim: int, key_padding_mask: torch.Tensor | None = None, *,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        n, src = layout.length, layout.source_length
        self.layout, self.src, self.num_layers = layout, src, num_layers
        self.k = torch.zeros(num_layers, batch, heads, n, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.valid = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]  # [B,1,1,N]
        if key_padding_mask is not None and bool(key_padding_mask[:, src:].any()):
            raise ValueError("SparseKVCache: only source positions may be padding")
        image_target = layout.target.kind == "image"
        self.grid = image_segment(layout)[1:3] if image_target else None
        self.kinds, self.index = [], []
        for layer in range(num_layers):
            keys = [pattern.decode_keys(layer, num_layers, layout, p) for p in range(src, n)]
            kind = _line_kind(keys, layout) if image_target else None
            self.kinds.append(kind or ("slice" if all(x is None for x in keys) else "gather"))
            self.index.append([None if x is None else x.to(device) for x in keys] if self.kinds[-1] == "gather" else None)
        self.lines: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * num_layers
        self.line_valid = None
        if self.valid is not None:
            h, w = self.grid or (0, 0)
            ones = torch.ones(batch, 1, 1, max(h, w) if self.grid else 0, dtype=torch.bool, device=device)
            self.line_valid = torch.cat([self.valid[..., :src], ones], -1)

    def prefill(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the source keys / values ``[B, H, S, D]`` of ``layer``."""
        s = self.src
        self.k[layer, :, :, :s], self.v[layer, :, :, :s] = k, v
        kind = self.kinds[layer]
        if kind in ("row", "column"):
            h, w = self.grid
            if kind == "row":
                bufs = [torch.cat([x, x.new_empty(*x.shape[:2], w, x.shape[-1])], 2) for x in (k, v)]
            else:  # [B, H, w, S + h, D]
                bufs = [torch.cat([x[:, :, None].expand(-1, -1, w, -1, -1),
                                   x.new_empty(*x.shape[:2], w, h, x.shape[-1])], 3) for x in (k, v)]
            self.lines[layer] = (bufs[0], bufs[1])

    def attend(self, layer: int, position: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Write the new key / value ``[B, H, 1, D]`` at ``position`` and attend; returns ``[B, H, 1, D]``."""
        kc, vc = self.k[layer], self.v[layer]
        kc[:, :, position : position + 1], vc[:, :, position : position + 1] = k, v
        kind, s = self.kinds[layer], self.src
        if kind in ("row", "column"):
            kb, vb = self.lines[layer]
            r, c = divmod(position - s, self.grid[1])
            line, at = (r, c) if kind == "row" else (c, r)
            if kind == "column":
                kb, vb = kb[:, :, line], vb[:, :, line]
            kb[:, :, s + at : s + at + 1], vb[:, :, s + at : s + at + 1] = k, v
            stop = s + at + 1
            mask = None if self.line_valid is None else self.line_valid[..., :stop]
            return F.scaled_dot_product_attention(q, kb[:, :, :stop], vb[:, :, :stop], attn_mask=mask)
        idx = self.index[layer][position - s] if kind == "gather" else None
        if idx is None:
            mask = None if self.valid is None else self.valid[..., : position + 1]
            return F.scaled_dot_product_attention(q, kc[:, :, : position + 1], vc[:, :, : position + 1], attn_mask=mask)
        mask = None if self.valid is None else self.valid.index_select(3, idx)
        return F.scaled_dot_product_attention(q, kc.index_select(2, idx), vc.index_select(2, idx), attn_mask=mask)


def _line_kind(keys: list[torch.Tensor | None], layout: Layout) -> str | None:
    """``"row"`` / ``"column"`` when every step's keys are the source plus its row / column so far."""
    img_off, h, w, _ = image_segment(layout)
    src = layout.source_length
    if img_off != src:
        return None
    source = torch.arange(src)
    for kind in ("row", "column"):
        ok = True
        for step, got in enumerate(keys):
            r, c = divmod(step, w)
            line = torch.arange(r * w, r * w + c + 1) if kind == "row" else torch.arange(c, step + 1, w)
            want = torch.cat([source, src + line])
            if got is None:
                got = torch.arange(src + step + 1)
            if not torch.equal(got.cpu(), want):
                ok = False
                break
        if ok:
            return kind
    return None
