"""A KV cache for decoding an image target one token at a time, laid out for the sparse patterns.

``SparseAttention.decode_cache`` gives it to the generator (``UnifiedTransformer.new_cache``), so
sparse cached sampling reads, per step and layer, only the keys the query's pattern allows — the
source plus its row / column / window so far, O(window) instead of O(position) — and mostly without
copying them:

* ``row`` layers: one buffer ``[R, H, S + w, D]`` = source keys, then the current image row. Image
  token (r, c) writes its key at ``S + c`` and attends the prefix ``:S + c + 1``: the source and its
  row so far (later columns of the previous row sit beyond the prefix and are never read);
* ``column`` layers: ``[R, H, w, S + h, D]``, one such buffer per image column;
* ``conv`` layers keep the plain ``[R, H, N, D]`` cache and gather the window (a window spans
  several rows) with indices read once per layout from ``decode_keys``;
* ``dense`` layers slice the plain cache (every earlier position is visible).

No other layer allocates the plain cache. The padding mask of a line buffer is the source's, then
``True``: target image tokens are never padding. Attention itself is SDPA, so results equal the
oracle-masked computation (tests check it).

Dimension key: R rows, H heads, N sequence length, D head dim, S source length, h x w image grid.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from vilgkit.interfaces import AttentionPattern, DecodeCache, StepKeys
from vilgkit.layout import Layout
from vilgkit_attention.masks import image_segment


@lru_cache(maxsize=32)
def _layer_kinds(pattern: AttentionPattern, layout: Layout, num_layers: int) -> tuple[str, ...]:
    """Per layer ``row`` / ``column`` (line buffer), ``gather`` or ``slice`` for this layout."""
    src, n = layout.source_length, layout.length
    image_target = layout.target.kind == "image"
    lines_ok = image_target and image_segment(layout)[0] == src  # the image starts right after the source
    kinds = []
    for layer in range(num_layers):
        declared = pattern.kind(layer, num_layers) if hasattr(pattern, "kind") else None
        if lines_ok and declared in ("row", "column"):
            kinds.append(declared)
        elif all(pattern.decode_keys(layer, num_layers, layout, p) is None for p in range(src, n)):
            kinds.append("slice")
        else:
            kinds.append("gather")
    return tuple(kinds)


class SparseKVCache(DecodeCache):
    """Per-layer keys / values of one decoding run (write the source, then one target position a step).

    Args:
        pattern: any :class:`AttentionPattern`; a ``kind(layer, num_layers)`` method naming ``row`` or
            ``column`` selects the line buffers, other layers slice or gather its ``decode_keys``.
        layout: the stream layout; line buffers are used only when the target is the image.
        num_layers, batch, heads, head_dim: cache geometry.
        key_padding_mask: ``Bool[R, N]`` or ``[R, S]``, True at padding (only source positions may be
            padding); it may also be given later with :meth:`set_source_padding`.
    """

    def __init__(
        self,
        pattern: AttentionPattern,
        layout: Layout,
        num_layers: int,
        batch: int,
        heads: int,
        head_dim: int,
        key_padding_mask: torch.Tensor | None = None,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        n, src = layout.length, layout.source_length
        self.layout, self.src, self.num_layers, self.length = layout, src, num_layers, 0
        self.rows, self.device = batch, torch.device(device)
        self.kinds = list(_layer_kinds(pattern, layout, num_layers))
        self.grid = image_segment(layout)[1:3] if layout.target.kind == "image" else None
        self.index = [
            _gather_index(pattern, layout, num_layers, layer, str(self.device)) if kind == "gather" else None
            for layer, kind in enumerate(self.kinds)
        ]
        self.buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
        for kind in self.kinds:
            if kind == "row":
                shape = (batch, heads, src + self.grid[1], head_dim)
            elif kind == "column":
                shape = (batch, heads, self.grid[1], src + self.grid[0], head_dim)
            else:
                shape = (batch, heads, n, head_dim)
            # empty, not zeros: every position a step reads was written before (source or earlier steps)
            self.buffers.append(tuple(torch.empty(shape, device=device, dtype=dtype) for _ in range(2)))
        self.valid = self.line_valid = None
        if key_padding_mask is not None:
            self.set_source_padding(key_padding_mask)

    @property
    def batch_size(self) -> int:
        return self.rows

    def set_source_padding(self, padding: torch.Tensor) -> None:
        """``Bool[R, S]`` (or ``[R, N]`` with an all-False target), True at padded source positions."""
        src, n = self.src, self.layout.length
        if padding.shape[1] > src and bool(padding[:, src:].any()):
            raise ValueError("SparseKVCache: only source positions may be padding")
        source = padding[:, :src].to(self.device)
        if not bool(source.any()):  # nothing padded: every step attends without a mask
            self.valid = self.line_valid = None
            return
        keep = ~source[:, None, None, :]  # [R, 1, 1, S]
        ones = torch.ones(self.rows, 1, 1, n - src, dtype=torch.bool, device=self.device)
        self.valid = torch.cat([keep, ones], -1)
        self.line_valid = self.valid[..., : src + max(self.grid)] if self.grid else None

    def write_source(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the source keys / values ``[R, H, S, D]`` of ``layer`` (into its line buffers)."""
        s = self.src
        kind = self.kinds[layer]
        for buf, x in zip(self.buffers[layer], (k, v)):
            if kind == "column":
                buf[:, :, :, :s] = x[:, :, None]  # the source, once per column buffer
            else:
                buf[:, :, :s] = x

    def prefill(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Alias of :meth:`write_source` (the name standalone decoders use)."""
        self.write_source(layer, k, v)

    def write_step(self, layer: int, position: int, k: torch.Tensor, v: torch.Tensor) -> StepKeys:
        """Write the new key / value ``[R, H, 1, D]`` at ``position``: into the query's line buffer for a
        row / column layer (its keys are then a prefix of that line), else at ``position``."""
        kind, s = self.kinds[layer], self.src
        kb, vb = self.buffers[layer]
        if kind in ("row", "column"):
            r, c = divmod(position - s, self.grid[1])
            line, at = (r, c) if kind == "row" else (c, r)
            if kind == "column":
                kb, vb = kb[:, :, line], vb[:, :, line]
            stop = s + at + 1
            kb[:, :, stop - 1 : stop], vb[:, :, stop - 1 : stop] = k, v
            return StepKeys(kb, vb, stop, self.line_valid)
        kb[:, :, position : position + 1], vb[:, :, position : position + 1] = k, v
        idx = self.index[layer][position - s] if kind == "gather" else None
        return StepKeys(kb, vb, position + 1, self.valid, idx)

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep ``rows`` (in that order): every buffer, and the padding masks."""
        for pair in self.buffers:
            for buf in pair:
                buf.copy_(buf.index_select(0, rows))
        self.rows = rows.numel()
        if self.valid is not None:
            self.valid = self.valid.index_select(0, rows)
            self.line_valid = self.valid[..., : self.src + max(self.grid)] if self.grid else None

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for pair in self.buffers for t in pair)

    def keys_read(self, layer: int, position: int) -> int:
        """How many keys the step at ``position`` reads in ``layer`` (for tests and benchmarks)."""
        kind, s = self.kinds[layer], self.src
        if kind in ("row", "column"):
            r, c = divmod(position - s, self.grid[1])
            return s + (c if kind == "row" else r) + 1
        idx = self.index[layer][position - s] if kind == "gather" else None
        return position + 1 if idx is None else idx.numel()


@lru_cache(maxsize=64)
def _gather_index(
    pattern: AttentionPattern, layout: Layout, num_layers: int, layer: int, device: str
) -> tuple[torch.Tensor | None, ...]:
    """Per target step, the ``Long[K]`` key positions of ``layer`` (``None``: the whole prefix), on ``device``."""
    steps = (pattern.decode_keys(layer, num_layers, layout, p) for p in range(layout.source_length, layout.length))
    return tuple(None if idx is None else idx.to(device=device, dtype=torch.long) for idx in steps)
