"""Sparse attention (ERNIE-ViLG §3.1.2, Fig. 2): row / column / convolutional image patterns.

Layer ``i`` (0-based, as the generator numbers its blocks) uses row attention if ``i % 4 != 2``,
column attention if ``i % 4 == 2``, and convolutional attention in the last layer. The schedule is
a constructor argument (a rule name, one kind for every layer, or an explicit per-layer list);
subclasses may override :meth:`SparseAttention.kind` for other rules.

Three execution paths agree with the oracle :meth:`SparseAttention.allowed` (tests check it):

* ``blockwise`` (CPU default): tiles of image queries sharing keys, context scores computed once,
  hand-written backward (``blockwise.py``); with ``recompute=True`` only q, k, v and one
  log-sum-exp per query are stored and the probabilities are recomputed from them in backward;
* ``flex`` (CUDA default): FlexAttention with cached block masks (``flex.py``);
* ``sdpa``: SDPA with the oracle mask (dense cost; a reference for debugging).

Decoding with a KV cache uses :meth:`SparseAttention.decode_keys`: the context (source) keys and
the image keys of the query's row / column / window so far. :meth:`SparseAttention.decode_cache`
gives the generator ``decode.SparseKVCache``, laid out so that row / column keys need no gather.

Dimension key: B batch, H heads, N sequence length, D head dim, K gathered keys.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import torch

from vilgkit.interfaces import AttentionPattern, CacheGeometry
from vilgkit.interfaces.attention import AttendContext, check_decode_position, check_layer, masked_sdpa
from vilgkit.layout import Layout
from vilgkit.registry import ATTENTION_PATTERNS
from vilgkit_attention.blockwise import blockwise_attend
from vilgkit_attention.decode import SparseKVCache
from vilgkit_attention.flex import flex_attend, flex_available
from vilgkit_attention.masks import (
    IMAGE_KINDS,
    SparseMask,
    build_allowed,
    check_kind,
    image_segment,
)

Kind = Literal["dense", "row", "column", "conv"]
Backend = Literal["auto", "blockwise", "flex", "sdpa"]


def paper_schedule(layer: int, num_layers: int) -> str:
    """ERNIE-ViLG / DALL-E: conv in the last layer, else column if ``layer % 4 == 2``, else row."""
    if layer == num_layers - 1:
        return "conv"
    return "column" if layer % 4 == 2 else "row"


@ATTENTION_PATTERNS.register_module()
class SparseAttention(AttentionPattern):
    """Row / column / convolutional image attention with the paper's (or any) layer schedule.

    Args:
        kernel_size: side of the convolutional window (odd; 11 in the paper, 3 in its Fig. 2).
        schedule: ``"paper"`` (the rule above), one kind for every layer (``"row"``, ``"column"``,
            ``"conv"``, ``"dense"``), or a list with one kind per layer (its length must equal the
            generator's number of layers).
        backend: ``"auto"`` picks ``flex`` on CUDA and ``blockwise`` elsewhere; ``"flex"`` is refused
            off CUDA (FlexAttention has no CPU backward).
        recompute: block-wise path only; store only q, k, v and a log-sum-exp per query for
            backward and recompute the sparse probabilities from them (the memory of a fused kernel
            at the cost of one extra score product); ``False`` stores the probabilities.
        conv_tile: block-wise conv path: query tiles of ``(rows, cols)`` (an int: square), clipped
            to divisors of the grid; each tile's keys are the window the kernel reaches from it
            (only the rows above and its own rows when the image is causal). The default, two
            whole rows, was the fastest at a 32x32 grid with an 11x11 kernel on CPU.
        lines_per_tile: block-wise row / column path: image rows (columns) per tile.
    """

    def __init__(
        self,
        kernel_size: int = 11,
        schedule: Literal["paper", "dense", "row", "column", "conv"] | list[Kind] = "paper",
        backend: Backend = "auto",
        recompute: bool = True,
        conv_tile: int | tuple[int, int] = (2, 32),
        lines_per_tile: int = 1,
    ) -> None:
        check_kind("conv", kernel_size)
        if isinstance(schedule, str):
            if schedule != "paper":
                check_kind(schedule, kernel_size)
        else:
            schedule = list(schedule)
            if not schedule:
                raise ValueError("schedule list must not be empty")
            for kind in schedule:
                check_kind(kind, kernel_size)
        if backend not in ("auto", "blockwise", "flex", "sdpa"):
            raise ValueError(f"backend must be auto, blockwise, flex or sdpa; got {backend!r}")
        tile = (conv_tile, conv_tile) if isinstance(conv_tile, int) else tuple(conv_tile)
        if len(tile) != 2 or min(tile) < 1 or lines_per_tile < 1:
            raise ValueError(
                f"conv_tile (rows, cols) and lines_per_tile must be >= 1, got {conv_tile}, {lines_per_tile}"
            )
        self.kernel_size = kernel_size
        self.schedule = schedule
        self.backend = backend
        self.recompute = recompute
        self.conv_tile = tile
        self.lines_per_tile = lines_per_tile

    @classmethod
    def conformance_args(cls) -> dict:
        """Tiny arguments for the registry-wide conformance tests (Fig. 2's kernel)."""
        return {"kernel_size": 3}

    def __repr__(self) -> str:
        return f"SparseAttention(kernel_size={self.kernel_size}, schedule={self.schedule!r}, backend={self.backend!r})"

    def kind(self, layer: int, num_layers: int) -> str:
        """The image pattern (``dense``/``row``/``column``/``conv``) of ``layer``."""
        check_layer(layer, num_layers)
        if self.schedule == "paper":
            return paper_schedule(layer, num_layers)
        if isinstance(self.schedule, str):
            return self.schedule
        if len(self.schedule) != num_layers:
            raise ValueError(f"schedule lists {len(self.schedule)} layers but the model has {num_layers}")
        return self.schedule[layer]

    def allowed(self, layer: int, num_layers: int, layout: Layout) -> torch.Tensor:
        """Oracle mask ``Bool[N, N]`` of docs/architecture.md §2 for this layer's image pattern."""
        return build_allowed(layout, self.kind(layer, num_layers), self.kernel_size)

    def resolve_backend(self, device: torch.device) -> str:
        """The path :meth:`attend` takes on ``device``."""
        if self.backend == "auto":
            return "flex" if flex_available(device) else "blockwise"
        if self.backend == "flex" and not flex_available(device):
            raise ValueError(
                f"backend='flex' needs CUDA (FlexAttention has no backward on {device.type}); "
                "use backend='auto' or 'blockwise'"
            )
        return self.backend

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, where: AttendContext) -> torch.Tensor:
        """Sparse attention ``[B, H, N, D]`` equal to SDPA with :meth:`allowed` (and padding)."""
        mask = SparseMask(where.layout, self.kind(where.layer, where.num_layers), self.kernel_size)
        pad = where.key_padding_mask
        backend = self.resolve_backend(q.device)
        if mask.kind == "dense" or backend == "sdpa":
            return masked_sdpa(q, k, v, build_allowed(*mask, q.device), pad)
        if backend == "flex":
            return flex_attend(q, k, v, mask, pad)
        tiles = dict(conv_tile=self.conv_tile, lines_per_tile=self.lines_per_tile)
        return blockwise_attend(q, k, v, mask, pad, **tiles, recompute=self.recompute)

    def decode_keys(self, layer: int, num_layers: int, layout: Layout, position: int) -> torch.Tensor | None:
        """Positions the query at ``position`` needs from the KV cache.

        ``None`` (slice ``0..position``) for text targets and dense layers; for an image target,
        the source positions plus the image keys of the pattern up to the query (raster order).
        """
        kind = self.kind(layer, num_layers)
        check_decode_position(layout, position)
        if kind == "dense" or layout.target.kind != "image":
            return None
        return _decode_table(layout, kind, self.kernel_size)[position - layout.source_length]

    def decode_cache(self, layout: Layout, num_layers: int, geometry: CacheGeometry) -> SparseKVCache | None:
        """:class:`~vilgkit_attention.decode.SparseKVCache` for an image target with a sparse layer, else ``None``.

        Text targets (image→text, VQA) see every earlier position in every layer: the generator's
        slicing cache serves them.
        """
        if layout.target.kind != "image" or all(self.kind(i, num_layers) == "dense" for i in range(num_layers)):
            return None
        rows, heads, head_dim, device, dtype = geometry
        return SparseKVCache(self, layout, num_layers, rows, heads, head_dim, device=device, dtype=dtype)


@lru_cache(maxsize=64)
def _decode_table(layout: Layout, kind: str, kernel_size: int) -> tuple[torch.Tensor | None, ...]:
    """Per image-target query, the sorted key positions it attends (read off the oracle), or
    ``None`` where that is the whole prefix (the first tokens of an image), so callers slice."""
    img_off, _, _, _ = image_segment(layout)
    allowed = build_allowed(layout, kind, kernel_size)
    rows = (allowed[p, : p + 1] for p in range(img_off, layout.length))
    return tuple(None if bool(row.all()) else row.nonzero().flatten() for row in rows)


__all__ = ["IMAGE_KINDS", "SparseAttention", "paper_schedule"]
