"""Dense attention: the UniLM-style mask with every image key visible to image queries.

The source is bidirectional (so ``is_causal`` alone cannot express the mask); a boolean mask built
once per (layout, device) goes to SDPA, which picks its fused kernel on CPU and GPU.

Dimension key: B batch, H heads, N sequence length, D head dim.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vilgkit.interfaces import AttentionPattern
from vilgkit.interfaces.attention import with_key_padding
from vilgkit.layout import Layout
from vilgkit.registry import ATTENTION_PATTERNS
from vilgkit_attention.masks import build_allowed, check_attend_inputs, check_decode_position


def masked_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, key_padding_mask: torch.Tensor | None
) -> torch.Tensor:
    """SDPA with ``allowed`` ``Bool[N, N]`` and an optional key padding mask ``Bool[B, N]``."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=with_key_padding(allowed, key_padding_mask))


@ATTENTION_PATTERNS.register_module()
class DenseAttention(AttentionPattern):
    """Every layer dense: source bidirectional, target causal, image queries see all image keys
    (subject to causality when the image is the target). docs/architecture.md §2, pattern ``dense``."""

    def allowed(self, layer: int, num_layers: int, layout: Layout) -> torch.Tensor:
        """Oracle mask ``Bool[N, N]`` (the same for every layer)."""
        _check_layer(layer, num_layers)
        return build_allowed(layout, "dense")

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        layer: int,
        num_layers: int,
        layout: Layout,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """SDPA with the cached mask (see :meth:`AttentionPattern.attend`)."""
        _check_layer(layer, num_layers)
        check_attend_inputs(q, k, v, layout, key_padding_mask)
        return masked_sdpa(q, k, v, build_allowed(layout, "dense", device=q.device), key_padding_mask)

    def decode_keys(self, layer: int, num_layers: int, layout: Layout, position: int) -> torch.Tensor | None:
        """``None``: a dense target query sees every cached position ``0..position``."""
        _check_layer(layer, num_layers)
        check_decode_position(layout, position)
        return None


def _check_layer(layer: int, num_layers: int) -> None:
    if num_layers < 1 or not 0 <= layer < num_layers:
        raise ValueError(f"layer {layer} is out of range for num_layers={num_layers}")
