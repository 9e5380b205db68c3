"""The dense UniLM mask, built in core for ``UnifiedTransformer(attention=None)``.

Core must not import the attention plugin, yet a generator without an explicit pattern should
still work: this is the dense case of DESIGN.md §1 expressed through the ``AttentionPattern`` base
machinery (its ``attend`` and ``decode_keys`` defaults). It is deliberately *not* registered: the
recipe-facing dense pattern is the plugin's ``DenseAttention``.

Dense masks depend only on (source length, total length), so they are memoised.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from vilgkit.interfaces.attention import AttentionPattern
from vilgkit.layout import Layout


@lru_cache(maxsize=64)
def _unilm_mask(source_length: int, length: int) -> torch.Tensor:
    """``Bool[N, N]``: source ↔ source, target → source, target → earlier-or-same target."""
    allowed = torch.ones(length, length, dtype=torch.bool).tril()
    allowed[:source_length, :source_length] = True
    return allowed


class DefaultDensePattern(AttentionPattern):
    """Dense attention with UniLM masks: bidirectional source, causal target (paper §3.1.2)."""

    def allowed(self, layer: int, num_layers: int, layout: Layout) -> torch.Tensor:
        return _unilm_mask(layout.source_length, layout.length)

    def decode_keys(self, layer: int, num_layers: int, layout: Layout, position: int) -> torch.Tensor | None:
        return None  # every cached position 0..position is visible (target rows are causal)

    def __repr__(self) -> str:
        return "DefaultDensePattern()"
