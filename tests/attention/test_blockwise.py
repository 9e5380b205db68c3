"""Block-wise CPU kernels: equal to SDPA with the oracle mask for outputs and gradients (fp32,
1e-5), both directions and VQA, with key padding in text segments; and actually sparse."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vilgkit.layout import Layout
from vilgkit_attention import SparseAttention

from .conftest import LAYOUTS, reference_allowed


def _text_padding(layout: Layout, batch: int) -> torch.Tensor:
    """Pad the tail of every text segment in batch item 1 (as a shorter caption/question would)."""
    pad = torch.zeros(batch, layout.length, dtype=torch.bool)
    for off, seg in zip(layout.offsets(), layout.segments):
        if seg.kind == "text" and seg.length > 2:
            pad[1, off + seg.length - 2 : off + seg.length] = True
    return pad


def _reference(q, k, v, layout, kind, kernel_size, pad):
    mask = reference_allowed(layout, kind, kernel_size)[None, None] & ~pad[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize("layout_name", list(LAYOUTS))
@pytest.mark.parametrize("kind,kernel_size,conv_tile,lines", [("row", 3, 8, 1), ("column", 3, 8, 1), ("row", 3, 8, 2),
                                                              ("column", 3, 8, 3), ("conv", 3, 2, 1), ("conv", 5, 8, 1),
                                                              ("conv", 3, 3, 1)])
@pytest.mark.parametrize("recompute", [True, False])
def test_blockwise_equals_oracle_sdpa(layout_name, kind, kernel_size, conv_tile, lines, recompute):
    layout = LAYOUTS[layout_name]
    torch.manual_seed(0)
    b, h, n, d = 2, 3, layout.length, 16
    qkv = [torch.randn(b, h, n, d, requires_grad=True) for _ in range(3)]
    pad = _text_padding(layout, b)
    pattern = SparseAttention(kernel_size=kernel_size, schedule=kind, backend="blockwise",
                              recompute=recompute, conv_tile=conv_tile, lines_per_tile=lines)
    out = pattern.attend(*qkv, layer=0, num_layers=1, layout=layout, key_padding_mask=pad)
    ref = _reference(*qkv, layout, kind, kernel_size, pad)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, qkv, grad)
    want = torch.autograd.grad(ref, qkv, grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_blockwise_without_padding_and_with_image_padding():
    layout = Layout.text_to_image(4, 4, 4)
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 2, layout.length, 8) for _ in range(3))
    for kind in ("row", "column", "conv"):
        pattern = SparseAttention(kernel_size=3, schedule=kind, backend="blockwise")
        out = pattern.attend(q, k, v, layer=0, num_layers=1, layout=layout)
        torch.testing.assert_close(out, _reference(q, k, v, layout, kind, 3, torch.zeros(1, layout.length, dtype=torch.bool)),
                                   atol=1e-5, rtol=1e-5)
        pad = torch.zeros(1, layout.length, dtype=torch.bool)
        pad[0, 4 + 1] = True  # an image key (never a query's only key: each query sees itself)
        out = pattern.attend(q, k, v, layer=0, num_layers=1, layout=layout, key_padding_mask=pad)
        # query 5 (the padded key itself) still sees text keys; compare rows that are well defined
        torch.testing.assert_close(out, _reference(q, k, v, layout, kind, 3, pad), atol=1e-5, rtol=1e-5)


def test_cpu_selects_blockwise_and_refuses_flex():
    pattern = SparseAttention()
    assert pattern.resolve_backend(torch.device("cpu")) == "blockwise"
    with pytest.raises(ValueError, match="needs CUDA"):
        SparseAttention(backend="flex").resolve_backend(torch.device("cpu"))


def _score_entries(monkeypatch, fn) -> int:
    """Query-key products computed by every SDPA call inside ``fn`` (B * H * Lq * Lk summed)."""
    real = F.scaled_dot_product_attention
    total = [0]

    def counting(q, k, v, **kw):
        total[0] += q.shape[:-1].numel() * k.shape[-2]
        return real(q, k, v, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    fn()
    monkeypatch.setattr(F, "scaled_dot_product_attention", real)
    return total[0]


def test_blockwise_computes_a_fraction_of_dense(monkeypatch):
    """At 16 text + 16x16 image tokens, sparse layers compute a fraction of the dense scores."""
    layout = Layout.text_to_image(16, 16, 16)
    q, k, v = (torch.randn(1, 2, layout.length, 16) for _ in range(3))
    dense_pattern = SparseAttention(schedule="dense")
    dense = _score_entries(monkeypatch, lambda: dense_pattern.attend(q, k, v, layer=0, num_layers=1, layout=layout))
    assert dense == 2 * layout.length**2
    # row/column, one line per tile: 256 queries x (16 text + 16 image) keys + 16 text queries x 272
    # keys; two lines per tile: 256 x (16 + 32) + 16 x 272
    for kind in ("row", "column"):
        for lines, expect in ((1, 2 * (256 * 32 + 16 * 272)), (2, 2 * (256 * 48 + 16 * 272))):
            pattern = SparseAttention(schedule=kind, backend="blockwise", lines_per_tile=lines)
            got = _score_entries(monkeypatch, lambda: pattern.attend(q, k, v, layer=0, num_layers=1, layout=layout))
            assert got == expect < 0.25 * dense
    pattern = SparseAttention(kernel_size=3, schedule="conv", backend="blockwise", conv_tile=8)
    got = _score_entries(monkeypatch, lambda: pattern.attend(q, k, v, layer=0, num_layers=1, layout=layout))
    assert got == 2 * (256 * (16 + 10 * 10) + 16 * 272) < 0.5 * dense  # 8x8 tiles + 1-token halo
