"""Dense attention with UniLM masks: the generator's default pattern and the recipes' ``DenseAttention``.

The source is bidirectional, the target causal and every image key visible to image queries (subject
to causality when the image is the target), so ``is_causal`` alone cannot express the mask. It lives
in core, not in the attention plugin, because ``UnifiedTransformer(attention=None)`` must work
without any plugin; sparse patterns (``vilgkit_attention``) build on the helpers of
:mod:`vilgkit.interfaces.attention`.

Dense masks depend only on (source length, total length, device), so they are memoised.

Training attention on the CPU is either :func:`masked_attention` (two matmuls and a masked softmax)
or SDPA, chosen per machine and dtype by :mod:`vilgkit.dispatch` (``attention_bf16`` /
``attention_fp32``, default ``explicit``): for the short streams of the demos (N ≈ 100) PyTorch's
CPU flash kernel with a boolean mask was slow in backward under bf16 autocast on a 2-core EPYC
without AMX, which need not hold on other CPUs. GPUs keep SDPA (fused kernels win there). The mask
is the dense pattern of docs/architecture.md §2.

Dimension key: B batch, H heads, N sequence length, D head dim.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from vilgkit import dispatch, dispatch_probes
from vilgkit.interfaces.attention import (
    AttendContext,
    AttentionPattern,
    check_decode_position,
    check_layer,
    masked_sdpa,
    with_key_padding,
)
from vilgkit.layout import Layout
from vilgkit.registry import ATTENTION_PATTERNS


@lru_cache(maxsize=128)
def unilm_mask(source_length: int, length: int, device: torch.device | None = None) -> torch.Tensor:
    """``Bool[N, N]``: source ↔ source, target → source, target → earlier-or-same target (read-only, shared)."""
    allowed = torch.ones(length, length, dtype=torch.bool).tril()
    allowed[:source_length, :source_length] = True
    return allowed if device is None else allowed.to(device)


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``softmax(q kᵀ / √D, masked) v`` with an explicit score matrix (CPU training path).

    Args:
        q, k, v: ``[B, H, N, D]`` (bf16 under autocast: everything runs in low precision, the
            softmax accumulating in fp32 inside its kernel).
        mask: ``Bool`` broadcastable to ``[B, H, N, N]``, True = may attend; every row needs one
            True (a query always sees itself or BOS).

    Returns:
        ``[B, H, N, D]`` in ``v``'s dtype.
    """
    # one pass over the [B, H, N, N] scores per step: the scale goes on q ([N, D]), the mask is an
    # additive 0 / -inf bias added in place to the matmul's fresh output (its backward does not
    # need it), and the softmax stays in the scores' dtype — a bf16 softmax accumulates in fp32 and
    # rounds its output as the fp32 softmax + cast did, without two [B, H, N, N] fp32 copies per
    # direction and layer (attention fwd + bwd at B=8, H=8, N=288: 0.046 → 0.025 CPU s on a
    # 2-core EPYC)
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))  # [B, H, N, N]
    bias = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device).masked_fill_(~mask, float("-inf"))
    probs = scores.add_(bias).softmax(dim=-1)
    return torch.matmul(probs.to(v.dtype), v)


@ATTENTION_PATTERNS.register_module()
class DenseAttention(AttentionPattern):
    """Every layer dense: bidirectional source, causal target (paper §3.1.2).

    The default pattern of :class:`~vilgkit.models.UnifiedTransformer` (no ``attention:`` in a
    recipe, or ``attention: {class_path: DenseAttention}``); on the CPU it trains with
    :func:`masked_attention` (see the module docstring), elsewhere with SDPA.
    """

    def allowed(self, layer: int, num_layers: int, layout: Layout) -> torch.Tensor:
        """Oracle mask ``Bool[N, N]`` (the same for every layer)."""
        check_layer(layer, num_layers)
        return unilm_mask(layout.source_length, layout.length)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, where: AttendContext) -> torch.Tensor:
        """Masked attention ``[B, H, N, D]``: explicit or SDPA on the CPU (per machine), SDPA elsewhere."""
        allowed = unilm_mask(where.layout.source_length, where.layout.length, q.device)
        if q.device.type == "cpu":
            low = q.dtype in (torch.bfloat16, torch.float16)
            if dispatch.choose("attention_bf16" if low else "attention_fp32") == "explicit":
                return masked_attention(q, k, v, with_key_padding(allowed, where.key_padding_mask))
        return masked_sdpa(q, k, v, allowed, where.key_padding_mask)

    def decode_keys(self, layer: int, num_layers: int, layout: Layout, position: int) -> torch.Tensor | None:
        """``None``: a dense target query sees every cached position ``0..position``."""
        check_layer(layer, num_layers)
        check_decode_position(layout, position)
        return None

    def __repr__(self) -> str:
        return "DenseAttention()"


for _name, _dtype in (("attention_bf16", torch.bfloat16), ("attention_fp32", torch.float32)):
    dispatch.register_probe(_name, lambda d=_dtype: dispatch_probes.attention_probe(masked_attention, unilm_mask, d))
