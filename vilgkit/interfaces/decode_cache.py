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
from typing import NamedTuple

import torch
import torch.nn.functional as F

from vilgkit.layout import Layout


class CacheGeometry(NamedTuple):
    """What sizes a decoding cache: ``batch_size`` rows (R), ``num_heads`` (H) of ``head_dim`` (D),
    on ``device`` in ``dtype``."""

    batch_size: int
    num_heads: int
    head_dim: int
    device: torch.device
    dtype: torch.dtype


class StepKeys(NamedTuple):
    """Where one decoding step's keys lie in a cache (what :meth:`DecodeCache.write_step` returns).

    Attributes:
        keys, values: ``[R, H, L, D]`` buffers holding the step's keys (and others).
        stop: the step attends positions ``< stop`` of the buffers (ignored with ``index``).
        valid: ``Bool[R, 1, 1, L]`` True at attendable keys, or ``None`` when nothing is padded.
        index: ``Long[K]`` positions to gather instead of the prefix (a sparse layer), or ``None``.
    """

    keys: torch.Tensor
    values: torch.Tensor
    stop: int
    valid: torch.Tensor | None = None
    index: torch.Tensor | None = None

    def attend(self, q: torch.Tensor) -> torch.Tensor:
        """SDPA of ``q`` ``[R, H, 1, D]`` over the prefix ``< stop``, or the gathered ``index`` keys."""
        if self.index is None:
            mask = None if self.valid is None else self.valid[..., : self.stop]
            keys, values = self.keys[:, :, : self.stop], self.values[:, :, : self.stop]
        else:  # gather only the keys the pattern allows (K ≪ position for row/column/conv layers)
            mask = None if self.valid is None else self.valid.index_select(3, self.index)
            keys, values = self.keys.index_select(2, self.index), self.values.index_select(2, self.index)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)


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

    def attend(self, layer: int, position: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Write the new key / value ``[R, H, 1, D]`` at ``position``, attend what the pattern allows.

        Returns:
            ``[R, H, 1, D]``, equal to the oracle-masked attention of that query.
        """
        return self.write_step(layer, position, k, v).attend(q)

    @abstractmethod
    def write_step(self, layer: int, position: int, k: torch.Tensor, v: torch.Tensor) -> StepKeys:
        """Store the step's key / value ``[R, H, 1, D]`` at ``position``; where its query's keys lie.

        A cache says where the keys are; :meth:`attend` computes the attention, the same for every cache.
        """

    @abstractmethod
    def reorder(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (in that order) of the filled positions, e.g. surviving beams."""

    @abstractmethod
    def nbytes(self) -> int:
        """Bytes held by the cached keys and values."""
