"""The pre-norm transformer block shared by the encoder and decoder roles (paper §3.1.2).

One block serves three call paths with the same weights:

* :meth:`Block.forward` — teacher forcing over a whole stream; the attention pattern computes
  masked attention (``AttentionPattern.attend``), so sparse patterns can use block-wise kernels;
* :meth:`Block.prefill` — the source segments of a stream at once, keys/values returned for the cache;
* :meth:`Block.decode` — one new position per row against a decoding cache (which attends).

Dimension key:
    B batch (rows), N sequence length, C hidden size, H heads, D head dim (C // H),
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from vilgkit.interfaces.attention import AttentionPattern
from vilgkit.interfaces.decode_cache import DecodeCache
from vilgkit.layout import Layout
from vilgkit.models.gemv import decode_linear


class MLP(Mlp):
    """Position-wise feed-forward network ``C → mlp_ratio·C → C`` with GELU: timm's ``Mlp``.

    Dropout only after the output projection (``drop=(0, dropout)``): a zero-probability dropout
    draws no random numbers, so outputs, initialisation and state-dict keys (``fc1``, ``fc2``) are
    those of the hand-written block this replaces.
    """

    def __init__(self, hidden_size: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__(hidden_size, int(round(hidden_size * mlp_ratio)), act_layer=nn.GELU, drop=(0.0, dropout))

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` for a few decoding rows (weights read through :func:`decode_linear`).

        Decoding runs in eval mode, where dropout is the identity: it is skipped, not called (a
        module call per layer and step is a visible share of a batch-1 step).
        """
        return decode_linear(self.fc2, F.gelu(decode_linear(self.fc1, x)))


class Block(nn.Module):
    """Pre-norm self-attention + MLP block whose attention mask comes from an :class:`AttentionPattern`.

    Args:
        hidden_size: C.
        num_heads: H (must divide C).
        mlp_ratio: MLP width as a multiple of C.
        dropout: residual dropout (attention probabilities are not dropped: the pattern owns SDPA).
        pattern: which keys each query sees, per layer.
        layer: this block's index (patterns differ per layer, e.g. column attention at ``i % 4 == 2``).
        num_layers: total number of blocks (e.g. convolutional attention in the last one).
        qk_norm: LayerNorm each head's queries and keys (learnable gain and bias) before the dot product.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float,
        dropout: float,
        pattern: AttentionPattern,
        layer: int,
        num_layers: int,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.layer = layer
        self.num_layers = num_layers
        self.pattern = pattern  # not a module: patterns hold no parameters
        self.ln1 = nn.LayerNorm(hidden_size)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)
        # QK-norm bounds the attention logits by the norms' learnable gains rather than by the
        # raw q/k scale, so a head can sharpen onto a few keys without its logits drifting
        head_dim = hidden_size // num_heads
        self.q_norm = nn.LayerNorm(head_dim) if qk_norm else None
        self.k_norm = nn.LayerNorm(head_dim) if qk_norm else None
        self.ln2 = nn.LayerNorm(hidden_size)
        self.mlp = MLP(hidden_size, mlp_ratio, dropout)
        self.drop = nn.Dropout(dropout)

    def _qkv(self, x: torch.Tensor, decoding: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B, N, C]`` → q, k, v each ``[B, H, N, D]``."""
        h = self.ln1(x)
        qkv = decode_linear(self.qkv, h) if decoding else self.qkv(h)
        b, n, _ = qkv.shape
        # "b n (three h d) -> three b h n d" as a view + permute: einops' parsing costs ~10 µs per
        # call, a visible share of a batch-1 decoding step
        q, k, v = qkv.view(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def _finish(self, x: torch.Tensor, attn: torch.Tensor, decoding: bool = False) -> torch.Tensor:
        """Residual adds after attention ``[B, H, N, D]``, then the MLP."""
        attn = attn.transpose(1, 2).flatten(2)  # b h n d -> b n (h d)
        x = x + (decode_linear(self.proj, attn) if decoding else self.drop(self.proj(attn)))  # decoding: eval mode
        h = self.ln2(x)
        return x + (self.mlp.decode(h) if decoding else self.mlp(h))

    def forward(self, x: torch.Tensor, layout: Layout, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced pass over a whole stream.

        Args:
            x: ``[B, N, C]`` with ``N == layout.length``.
            layout: segment layout of the stream.
            key_padding_mask: ``Bool[B, N]``, True at padding positions.

        Returns:
            ``[B, N, C]``.
        """
        q, k, v = self._qkv(x)
        attn = self.pattern.attend(
            q, k, v, layer=self.layer, num_layers=self.num_layers, layout=layout, key_padding_mask=key_padding_mask
        )
        return self._finish(x, attn)

    def prefill(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The source part of a stream, with an explicit mask.

        The source never attends to the target (docs/architecture.md §2), so the source rows of the oracle
        mask restricted to source keys are all a prefill needs.

        Args:
            x: ``[B, S, C]`` source positions.
            mask: ``Bool[B or 1, 1, S, S]`` (pattern restricted to the source, and key padding).

        Returns:
            ``(x_out [B, S, C], k [B, H, S, D], v [B, H, S, D])``.
        """
        q, k, v = self._qkv(x)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self._finish(x, attn), k, v

    def decode(self, x: torch.Tensor, cache: DecodeCache, position: int) -> torch.Tensor:
        """One new position per row against the cache (which writes its key/value, then attends).

        Args:
            x: ``[B, 1, C]`` the new position's input.
            cache: the run's :class:`DecodeCache`; positions ``< position`` are filled.
            position: absolute stream position of the new token.

        Returns:
            ``[B, 1, C]``.
        """
        q, k, v = self._qkv(x, decoding=True)
        return self._finish(x, cache.attend(self.layer, position, q, k, v), decoding=True)
