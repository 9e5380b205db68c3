"""FlexAttention path for sparse patterns on CUDA (it trains there; on CPU its backward is missing).

The oracle mask is turned into a FlexAttention ``BlockMask`` once per (layout, kind, device) and
cached, so the kernel skips every 128x128 block the pattern leaves empty. Row and conv patterns are
already block-sparse in raster order; a column pattern is not (a column is spread over every row),
so column layers permute the image positions to column-major order first, which makes each column
contiguous and its blocks sparse, and permute the output back. Key padding is applied with a
``score_mod`` so the cached block mask stays valid for every batch.

Dimension key: B batch, H heads, N sequence length, D head dim.
"""

from __future__ import annotations

import torch

from vilgkit.layout import Layout
from vilgkit_attention.masks import SparseMask, build_allowed, image_segment

_COMPILED = None
_BLOCK_MASKS: dict[tuple, tuple] = {}


def flex_available(device: torch.device) -> bool:
    """True where FlexAttention can train: a CUDA device and a PyTorch that ships it."""
    if device.type != "cuda":
        return False
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:  # pragma: no cover - old PyTorch
        return False
    return True


def _flex():
    """``flex_attention`` compiled once per process (eager FlexAttention is a slow reference)."""
    global _COMPILED
    if _COMPILED is None:
        from torch.nn.attention.flex_attention import flex_attention

        _COMPILED = torch.compile(flex_attention, dynamic=False)
    return _COMPILED


def column_major_order(layout: Layout) -> torch.Tensor:
    """Permutation of positions that lists the image in column-major order (text unchanged)."""
    img_off, h, w, _ = image_segment(layout)
    perm = torch.arange(layout.length)
    grid = torch.arange(h * w).reshape(h, w)
    perm[img_off : img_off + h * w] = img_off + grid.t().reshape(-1)
    return perm


def _block_mask(layout: Layout, kind: str, kernel_size: int, device: torch.device):
    key = (layout, kind, kernel_size if kind == "conv" else 0, str(device))
    if key not in _BLOCK_MASKS:
        from torch.nn.attention.flex_attention import create_block_mask

        allowed = build_allowed(layout, kind, kernel_size, device=device)
        perm = inverse = None
        if kind == "column":
            perm = column_major_order(layout).to(device)
            inverse = torch.argsort(perm)
            allowed = allowed[perm][:, perm].contiguous()

        def mask_mod(b, h, q_idx, kv_idx):
            return allowed[q_idx, kv_idx]

        n = layout.length
        block = create_block_mask(mask_mod, B=None, H=None, Q_LEN=n, KV_LEN=n, device=device)
        if len(_BLOCK_MASKS) > 64:
            _BLOCK_MASKS.clear()
        _BLOCK_MASKS[key] = (block, perm, inverse)
    return _BLOCK_MASKS[key]


def block_mask_sparsity(layout: Layout, kind: str, kernel_size: int, device: torch.device) -> float:
    """Percentage of 128x128 blocks the cached block mask skips (for docs and benchmarks)."""
    return float(_block_mask(layout, kind, kernel_size, device)[0].sparsity())


def flex_attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: SparseMask, key_padding_mask: torch.Tensor | None
) -> torch.Tensor:
    """FlexAttention with the cached block mask; equal to SDPA with the oracle mask (and padding)."""
    block, perm, inverse = _block_mask(*mask, q.device)
    pad = key_padding_mask
    if perm is not None:
        q, k, v = q[:, :, perm], k[:, :, perm], v[:, :, perm]
        pad = None if pad is None else pad[:, perm]
    score_mod = None
    if pad is not None:

        def score_mod(score, b, h, q_idx, kv_idx):
            return torch.where(pad[b, kv_idx], -float("inf"), score)

    out = _flex()(q, k, v, score_mod=score_mod, block_mask=block)
    return out if inverse is None else out[:, :, inverse]
