"""The decoding-cache interface: keys and values of one incremental decoding run.

A generator prefills the source once, then feeds one target position per step; the cache stores
what earlier positions left and computes each step's attention. The generic cache (core's
``vilgkit.models.cache.KVCache``) slices the prefix or gathers an attention pattern's
``decode_keys``; a pattern may supply a cache laid out for it
(:meth:`~vilgkit.interfaces.AttentionPattern.decode_cache`), e.g. the sparse plugin's line buffers,
where a row layer's keys are contiguous without a gather.

Dimension key: R rows (prompts × candidates [× 2 with guidance]), H heads, S source length,
D head dim.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from vilgkit.layout import Layout


class DecodeCache(ABC):
    """Per-layer keys / values of one decoding run over a fixed :class:`Layout`.

    Attributes:
        layout: the stream (source segments, then the target being decoded).
        length: filled positions (the next position to write); the generator advances it.
    """

    layout: Layout
    length: int

    @property
    @abstractmethod
    def batch_size(self) -> int:
        """R, the number of rows decoded together."""

    @abstractmethod
    def write_source(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store ``layer``'s source keys / values ``[R, H, S, D]`` (after the prefill)."""

    @abstractmethod
    def set_source_padding(self, padding: torch.Tensor) -> None:
        """``Bool[R, S]``, True at padded source positions (never attended). Target positions are never padding."""

    @abstractmethod
    def attend(
        self,
        layer: int,
        position: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
    ) -> torch.Tensor:
        """Write the new key / value ``[R, H, 1, D]`` at ``position``, attend what the pattern allows.

        Returns:
            ``[R, H, 1, D]``, equal to the oracle-masked attention of that query.
        """

    @abstractmethod
    def reorder(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (in that order) of the filled positions, e.g. surviving beams."""

    @abstractmethod
    def nbytes(self) -> int:
        """Bytes held by the cached keys and values."""
