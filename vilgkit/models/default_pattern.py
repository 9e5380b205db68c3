"""The dense UniLM mask, built in core for ``UnifiedTransformer(attention=None)``.

Core must not import the attention plugin, yet a generator without an explicit pattern should
still work: this is the dense case of docs/architecture.md §2 expressed through the ``AttentionPattern`` base
machinery (its ``decode_keys`` default; ``attend`` is overridden, see below). It is deliberately
*not* registered: the recipe-facing dense pattern is the plugin's ``DenseAttention``.

Dense masks depend only on (source length, total length), so they are memoised.

Training attention on the CPU is either :func:`masked_attention` (two matmuls and a masked softmax)
or SDPA, chosen per machine and dtype by :mod:`vilgkit.dispatch` (``attention_bf16`` /
``attention_fp32``, default ``explicit``): for the short streams of the demos (N ≈ 100) PyTorch's
CPU flash kernel with a boolean mask was slow in backward under bf16 autocast on a 2-core EPYC
without AMX (CPU time per layer and direction, forward + backward, B=64, N=96, D=64: SDPA 0.082 s
vs 0.051 s; a whole 4×256 generator step 2.16 → 1.76 s), which need not hold on other CPUs.
GPUs keep SDPA (fused kernels win there).
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from vilgkit import dispatch
from vilgkit.interfaces.attention import AttentionPattern, with_key_padding
from vilgkit.layout import Layout


@lru_cache(maxsize=64)
def _unilm_mask(source_length: int, length: int) -> torch.Tensor:
    """``Bool[N, N]``: source ↔ source, target → source, target → earlier-or-same target."""
    allowed = torch.ones(length, length, dtype=torch.bool).tril()
    allowed[:source_length, :source_length] = True
    return allowed


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


class DefaultDensePattern(AttentionPattern):
    """Dense attention with UniLM masks: bidirectional source, causal target (paper §3.1.2).

    The default pattern of :class:`~vilgkit.models.UnifiedTransformer` (``attention: null`` in a
    recipe); on the CPU it trains with :func:`masked_attention` (see the module docstring).
    """

    def allowed(self, layer: int, num_layers: int, layout: Layout) -> torch.Tensor:
        return _unilm_mask(layout.source_length, layout.length)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, layer: int, num_layers: int,
               layout: Layout, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Masked attention ``[B, H, N, D]``: explicit or SDPA on the CPU (per machine), SDPA elsewhere."""
        mask = with_key_padding(self.allowed(layer, num_layers, layout).to(q.device), key_padding_mask)
        if q.device.type == "cpu":
            low = q.dtype in (torch.bfloat16, torch.float16)
            if dispatch.choose("attention_bf16" if low else "attention_fp32") == "explicit":
                return masked_attention(q, k, v, mask)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def decode_keys(self, layer: int, num_layers: int, layout: Layout, position: int) -> torch.Tensor | None:
        return None  # every cached position 0..position is visible (target rows are causal)

    def __repr__(self) -> str:
        return "DefaultDensePattern()"
