"""The attention-pattern interface: which keys each query may see, and fast ways to compute it.

The reference definition (docs/architecture.md §2) is expressed by :meth:`AttentionPattern.allowed`; every fast
path must agree with it. Layers are identified by ``(layer, num_layers)`` so that schedules such as
"convolutional attention in the last layer" need no hidden state.

Shapes (dimension key): B batch, H heads, N sequence length, D head dim, K gathered keys.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

import torch
import torch.nn.functional as F

from vilgkit.interfaces.decode_cache import CacheGeometry, DecodeCache
from vilgkit.layout import Layout


def with_key_padding(allowed: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
    """The attention mask for a batch: ``allowed`` ``Bool[N, N]`` without padding (returned as is), or
    ``Bool[B, 1, N, N]`` that also hides the padded keys (``key_padding_mask`` ``Bool[B, N]``, True = pad)."""
    if key_padding_mask is None:
        return allowed
    return allowed[None, None] & ~key_padding_mask[:, None, None, :]


def masked_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, key_padding_mask: torch.Tensor | None
) -> torch.Tensor:
    """SDPA with ``allowed`` ``Bool[N, N]`` and an optional key padding mask ``Bool[B, N]``."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=with_key_padding(allowed, key_padding_mask))


def check_layer(layer: int, num_layers: int) -> None:
    """A clear error for a layer index outside ``[0, num_layers)``."""
    if num_layers < 1 or not 0 <= layer < num_layers:
        raise ValueError(f"layer {layer} is out of range for num_layers={num_layers}")


def check_attend_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: Layout, key_padding_mask: torch.Tensor | None
) -> None:
    """Clear errors for shape mistakes before any kernel runs."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be [B, H, N, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[:3] != k.shape[:3] or k.shape[:3] != v.shape[:3] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q, k, v shapes disagree: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[2] != layout.length:
        raise ValueError(f"sequence length {q.shape[2]} does not match the layout's {layout.length}")
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != (q.shape[0], q.shape[2]):
            raise ValueError(
                f"key_padding_mask must be Bool[B, N] = [{q.shape[0]}, {q.shape[2]}], got "
                f"{key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
            )


def check_decode_position(layout: Layout, position: int) -> None:
    """Decoding steps are target positions; the source is prefilled with ``attend``."""
    if not layout.source_length <= position < layout.length:
        raise ValueError(
            f"decode position {position} is not a target position "
            f"[{layout.source_length}, {layout.length}) of this layout"
        )


class AttendContext(NamedTuple):
    """Which keys a full-sequence :meth:`AttentionPattern.attend` call's queries may see: the
    pattern's ``allowed`` mask for ``layer`` of ``num_layers`` on ``layout``, less the padded keys
    (``key_padding_mask`` ``Bool[B, N]``, True = pad; ``None``: no padding). Inputs already checked."""

    layer: int
    num_layers: int
    layout: Layout
    key_padding_mask: torch.Tensor | None = None


class AttentionPattern(ABC):
    """Decides, per layer, which keys a query attends to, and computes attention accordingly."""

    @abstractmethod
    def allowed(self, layer: int, num_layers: int, layout: Layout) -> torch.Tensor:
        """The oracle mask ``Bool[N, N]``: ``allowed[q, k]`` is True where query q may attend key k.

        Padding is *not* included (it is per batch); callers combine it with a key-padding mask.
        """

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
        """Full-sequence attention (training / teacher forcing).

        Args:
            q, k, v: ``[B, H, N, D]``.
            key_padding_mask: ``Bool[B, N]``, True where the key is padding (never attended).

        Returns:
            ``[B, H, N, D]``: :meth:`attention` of the inputs, after clear errors for a layer index
            out of range or mismatched shapes.
        """
        check_layer(layer, num_layers)
        check_attend_inputs(q, k, v, layout, key_padding_mask)
        return self.attention(q, k, v, AttendContext(layer, num_layers, layout, key_padding_mask))

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, where: AttendContext) -> torch.Tensor:
        """The attention ``[B, H, N, D]`` of checked inputs (what :meth:`attend` computes).

        The default is SDPA with the oracle mask; patterns override it with kernels that only
        compute what the mask allows (they must agree with the default).
        """
        allowed = self.allowed(where.layer, where.num_layers, where.layout).to(q.device)
        return masked_sdpa(q, k, v, allowed, where.key_padding_mask)

    def decode_keys(self, layer: int, num_layers: int, layout: Layout, position: int) -> torch.Tensor | None:
        """Key positions the query at ``position`` needs when decoding with a KV cache.

        Returns:
            ``Long[K]`` sorted positions (all ``<= position`` for target queries), or ``None`` when
            the query sees every cached position ``0..position`` (then callers slice the cache
            instead of gathering).
        """
        row = self.allowed(layer, num_layers, layout)[position, : position + 1]
        if bool(row.all()):
            return None
        return row.nonzero().flatten()

    def decode_cache(self, layout: Layout, num_layers: int, geometry: CacheGeometry) -> DecodeCache | None:
        """A decoding cache of ``geometry`` laid out for this pattern, or ``None`` (the default) for the
        generator's own.

        The generator's cache slices the prefix where :meth:`decode_keys` is ``None`` and gathers the
        listed keys otherwise; a pattern whose keys can be kept contiguous returns a cache that
        avoids the gather. Either must give the oracle's attention.
        """
        return None
