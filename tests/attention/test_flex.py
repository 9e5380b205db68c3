"""FlexAttention path on CUDA: equal to SDPA with the oracle (outputs and gradients), chosen
automatically on CUDA, column layers permuted to column-major so their block mask is sparse."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vilgkit.layout import Layout
from vilgkit_attention import SparseAttention
from vilgkit_attention.flex import block_mask_sparsity, column_major_order

from .conftest import reference_allowed

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_column_major_order_lists_columns_contiguously():
    layout = Layout.text_to_image(2, 2, 3)  # image codes 0..5 at positions 2..7
    assert column_major_order(layout).tolist() == [0, 1, 2, 5, 3, 6, 4, 7]


@cuda
@pytest.mark.gpu
def test_auto_backend_is_flex_on_cuda():
    assert SparseAttention().resolve_backend(torch.device("cuda")) == "flex"


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("direction", ["text2image", "image2text", "vqa"])
@pytest.mark.parametrize("kind", ["row", "column", "conv"])
def test_flex_equals_oracle_sdpa(direction, kind):
    layout = {
        "text2image": Layout.text_to_image(24, 16, 16),
        "image2text": Layout.image_to_text(16, 16, 24),
        "vqa": Layout.vqa(16, 16, 12, 12),
    }[direction]
    torch.manual_seed(0)
    n = layout.length
    qkv = [torch.randn(2, 4, n, 32, device="cuda", requires_grad=True) for _ in range(3)]
    pad = torch.zeros(2, n, dtype=torch.bool, device="cuda")
    off = next(o for o, s in zip(layout.offsets(), layout.segments) if s.kind == "text")
    pad[1, off + 5 : off + 8] = True
    pattern = SparseAttention(kernel_size=5, schedule=kind)
    out = pattern.attend(*qkv, layer=0, num_layers=1, layout=layout, key_padding_mask=pad)
    mask = reference_allowed(layout, kind, 5).cuda()[None, None] & ~pad[:, None, None, :]
    ref = F.scaled_dot_product_attention(*qkv, attn_mask=mask)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, qkv, g), torch.autograd.grad(ref, qkv, g)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@cuda
@pytest.mark.gpu
def test_block_masks_are_sparse_at_paper_size():
    layout = Layout.text_to_image(64, 32, 32)
    dense = block_mask_sparsity(layout, "dense", 11, torch.device("cuda"))
    for kind in ("row", "column", "conv"):
        assert block_mask_sparsity(layout, kind, 11, torch.device("cuda")) > dense + 20, kind
