"""A pre-allocated key/value cache for incremental decoding (both directions, whole candidate batch).

Dimension key: R rows (prompts × candidates [× 2 with guidance]), H heads, N stream length
(``layout.length``), D head dim, K keys of one sparse decoding step.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vilgkit.layout import Layout


@dataclass
class KVCache:
    """Keys and values of every layer for a fixed layout, allocated once before decoding.

    Attributes:
        layout: the stream this cache holds (source segments, then the target being decoded).
        keys, values: one ``[R, H, N, D]`` tensor per layer.
        key_padding: ``Bool[R, N]``, True where a cached position is padding (never attended).
        key_plan: per layer, per *target* step, the ``Long[K]`` positions that step attends (a sparse
            pattern's ``decode_keys``), or ``None`` for a whole layer that sees every cached position.
        length: number of filled positions (the next position to write).
    """

    layout: Layout
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    key_padding: torch.Tensor
    key_plan: list[list[torch.Tensor | None] | None]
    length: int = 0
    _valid: torch.Tensor | None = field(default=None, repr=False)

    @property
    def batch_size(self) -> int:
        return self.key_padding.shape[0]

    def valid_mask(self) -> torch.Tensor | None:
        """``Bool[R, 1, 1, N]`` True at attendable keys, or ``None`` when nothing is padded.

        Built once after the prefill (padding never changes while decoding), so steps only slice it.
        """
        if self._valid is None:
            padded = bool(self.key_padding.any())  # one check per prefill, not per step
            self._valid = ~self.key_padding[:, None, None, :] if padded else self.key_padding.new_ones(0)
        return self._valid if self._valid.numel() else None

    def key_index(self, layer: int, position: int) -> torch.Tensor | None:
        """Positions the query at absolute ``position`` attends in ``layer`` (``None``: all ``<= position``)."""
        plan = self.key_plan[layer]
        if plan is None:
            return None
        return plan[position - self.layout.source_length]

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (in that order) of the filled positions, e.g. surviving beams."""
        n = self.length
        for cache in (*self.keys, *self.values):
            cache[:, :, :n].copy_(cache[:, :, :n].index_select(0, rows))
        self.key_padding.copy_(self.key_padding.index_select(0, rows))
        self._valid = None

    def nbytes(self) -> int:
        """Bytes held by keys and values."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))
