"""The default dense pattern's CPU training path (explicit masked softmax) equals SDPA with the mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vilgkit.layout import Layout
from vilgkit.models import DenseAttention
from vilgkit.models.dense_attention import masked_attention


def test_masked_attention_matches_sdpa_with_padding() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 9, 4, generator=g) for _ in range(3))
    layout = Layout.text_to_image(5, 2, 2)
    pad = torch.zeros(3, 9, dtype=torch.bool)
    pad[1, 3:5] = True  # a shorter prompt in row 1
    pattern = DenseAttention()
    got = pattern.attend(q, k, v, layer=0, num_layers=1, layout=layout, key_padding_mask=pad)
    mask = pattern.allowed(0, 1, layout)[None, None] & ~pad[:, None, None, :]
    torch.testing.assert_close(got, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    torch.testing.assert_close(masked_attention(q, k, v, mask), got)


def test_masked_attention_backward_under_bf16_autocast() -> None:
    q, k, v = (torch.randn(2, 2, 6, 4, requires_grad=True) for _ in range(3))
    mask = torch.ones(6, 6, dtype=torch.bool).tril()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = masked_attention(q, k, v, mask)
    out.float().sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all() and torch.isfinite(v.grad).all()
