"""The generic pre-allocated key/value cache for incremental decoding (both directions, whole candidate batch).

Used whenever the attention pattern supplies no cache of its own
(:meth:`~vilgkit.interfaces.AttentionPattern.decode_cache`): each step writes one position and attends
the cached prefix by slicing (layers whose ``decode_keys`` are ``None``) or by gathering the
pattern's ``decode_keys`` (sparse layers read only their K keys).

Dimension key: R rows (prompts × candidates [× 2 with guidance]), H heads, N stream length
(``layout.length``), D head dim, K keys of one sparse decoding step, S source length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vilgkit.interfaces.decode_cache import DecodeCache, StepKeys
from vilgkit.layout import Layout


@dataclass
class KVCache(DecodeCache):
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

    def write_source(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        S = k.shape[2]
        self.keys[layer][:, :, :S].copy_(k)
        self.values[layer][:, :, :S].copy_(v)

    def set_source_padding(self, padding: torch.Tensor) -> None:
        self.key_padding.zero_()
        self.key_padding[:, : padding.shape[1]] = padding
        self._valid = None  # padding changed: rebuild the step mask once

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

    def write_step(self, layer: int, position: int, k: torch.Tensor, v: torch.Tensor) -> StepKeys:
        k_cache, v_cache = self.keys[layer], self.values[layer]
        k_cache[:, :, position : position + 1].copy_(k)
        v_cache[:, :, position : position + 1].copy_(v)
        return StepKeys(k_cache, v_cache, position + 1, self.valid_mask(), self.key_index(layer, position))

    def reorder(self, rows: torch.Tensor) -> None:
        n = self.length
        for cache in (*self.keys, *self.values):
            cache[:, :, :n].copy_(cache[:, :, :n].index_select(0, rows))
        self.key_padding.copy_(self.key_padding.index_select(0, rows))
        self._valid = None

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))
