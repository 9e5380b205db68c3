"""Block-wise CPU kernels: equal to SDPA with the oracle mask for outputs and gradients (fp32,
1e-5), both directions and VQA, with key padding in text segments; and actually sparse."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vilgkit.layout import Layout
from vilgkit_attention import SparseAttention
from vilgkit_attention.blockwise import tile_plan

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
@pytest.mark.parametrize(
    "kind,kernel_size,conv_tile,lines",
    [
        ("row", 3, 8, 1),
        ("column", 3, 8, 1),
        ("row", 3, 8, 2),
        ("column", 3, 8, 3),
        ("conv", 3, 2, 1),
        ("conv", 5, 8, 1),
        ("conv", 3, 3, 1),
    ],
)
@pytest.mark.parametrize("recompute", [True, False])
def test_blockwise_equals_oracle_sdpa(layout_name, kind, kernel_size, conv_tile, lines, recompute):
    layout = LAYOUTS[layout_name]
    torch.manual_seed(0)
    b, h, n, d = 2, 3, layout.length, 16
    qkv = [torch.randn(b, h, n, d, requires_grad=True) for _ in range(3)]
    pad = _text_padding(layout, b)
    pattern = SparseAttention(
        kernel_size=kernel_size,
        schedule=kind,
        backend="blockwise",
        recompute=recompute,
        conv_tile=conv_tile,
        lines_per_tile=lines,
    )
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
        torch.testing.assert_close(
            out,
            _reference(q, k, v, layout, kind, 3, torch.zeros(1, layout.length, dtype=torch.bool)),
            atol=1e-5,
            rtol=1e-5,
        )
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


def test_blockwise_computes_a_fraction_of_dense():
    """At 16 text + 16x16 image tokens, sparse layers compute a fraction of the dense scores."""
    layout = Layout.text_to_image(16, 16, 16)
    dense = layout.length**2
    # text queries see the 16 text keys only; every image query sees the 16 context keys plus its
    # tile: one (two) rows / columns per tile -> 16 (32) image keys
    for kind in ("row", "column"):
        for lines, image_keys in ((1, 16), (2, 32)):
            plan = tile_plan(layout, kind, 3, (2, 32), lines)
            assert plan.score_entries() == 16 * 16 + 256 * (16 + image_keys) < 0.2 * dense
    # conv 3x3, causal: tiles of 2 full rows see those rows and the one above (3 x 16 keys)
    plan = tile_plan(layout, "conv", 3, (2, 32), 1)
    assert plan.score_entries() == 16 * 16 + 256 * (16 + 3 * 16) < 0.25 * dense
    # 11x11 at the paper size: 4x32 tiles see 9 rows of 32 keys, far less than 1088 per query
    paper = Layout.text_to_image(64, 32, 32)
    plan = tile_plan(paper, "conv", 11, (2, 32), 1)
    assert plan.tile_allow.shape == (16, 64, 7 * 32)
    assert plan.score_entries() < 0.3 * paper.length**2


@pytest.mark.parametrize(
    "kind,conv_tile", [("conv", (1, 32)), ("conv", (2, 4)), ("conv", (4, 2)), ("conv", 2), ("row", 1), ("column", 1)]
)
@pytest.mark.parametrize("direction", ["text2image", "image2text"])
def test_blockwise_paper_kernel_tiles(kind, conv_tile, direction):
    """11x11 on an 8x8 grid (the window exceeds tiles and the grid): whole-width and patch tiles."""
    layout = Layout.text_to_image(6, 8, 8) if direction == "text2image" else Layout.image_to_text(8, 8, 6)
    torch.manual_seed(2)
    qkv = [torch.randn(2, 2, layout.length, 8, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    pad = _text_padding(layout, 2)
    pattern = SparseAttention(kernel_size=11 if kind == "conv" else 3, schedule=kind, conv_tile=conv_tile)
    out = pattern.attend(*qkv, layer=0, num_layers=1, layout=layout, key_padding_mask=pad)
    ref = _reference(*qkv, layout, kind, pattern.kernel_size, pad)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    grad = torch.randn_like(out)
    for g, w in zip(torch.autograd.grad(out, qkv, grad), torch.autograd.grad(ref, qkv, grad)):
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10)


def test_blockwise_saves_only_inputs_and_log_sum_exp():
    """recompute=True keeps q, k, v and one float per query row for backward, nothing per score."""
    layout = Layout.text_to_image(8, 8, 8)
    qkv = torch.randn(1, layout.length, 3, 2, 16).permute(2, 0, 3, 1, 4).requires_grad_()  # one storage
    q, k, v = qkv.unbind(0)
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    for recompute, bound in ((True, qkv.numel() * 4 + 2 * layout.length * 4 + 1024), (False, None)):
        saved.clear()
        pattern = SparseAttention(kernel_size=3, schedule="conv", recompute=recompute)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = pattern.attend(q, k, v, layer=0, num_layers=1, layout=layout)
        if bound is not None:
            assert sum(saved.values()) <= bound
        else:  # the probabilities are kept: more than the inputs
            assert sum(saved.values()) > qkv.numel() * 4 + 2 * layout.length * 4 + 1024
        out.sum().backward()


def test_blockwise_low_precision_and_no_grad():
    """bf16 inputs are computed in float32 and returned in bf16; no-grad calls take the plain forward."""
    layout = Layout.text_to_image(4, 4, 4)
    torch.manual_seed(3)
    q, k, v = (torch.randn(1, 2, layout.length, 8) for _ in range(3))
    pattern = SparseAttention(kernel_size=3, schedule="conv")
    ref = _reference(q, k, v, layout, "conv", 3, torch.zeros(1, layout.length, dtype=torch.bool))
    with torch.no_grad():
        torch.testing.assert_close(
            pattern.attend(q, k, v, layer=0, num_layers=1, layout=layout), ref, atol=1e-5, rtol=1e-5
        )
    out = pattern.attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), layer=0, num_layers=1, layout=layout)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("recompute", [True, False])
def test_blockwise_chunks_of_tiles(monkeypatch, recompute):
    """Tiles processed a few at a time (small chunk budget) give the same outputs and gradients."""
    import vilgkit_attention.blockwise as bw

    monkeypatch.setattr(bw, "CHUNK_SCORES", 1)  # one tile per chunk
    layout = LAYOUTS["vqa"]
    torch.manual_seed(5)
    qkv = [torch.randn(2, 2, layout.length, 8, requires_grad=True) for _ in range(3)]
    pad = _text_padding(layout, 2)
    for kind in ("row", "column", "conv"):
        pattern = SparseAttention(kernel_size=3, schedule=kind, recompute=recompute, conv_tile=(1, 2))
        out = pattern.attend(*qkv, layer=0, num_layers=1, layout=layout, key_padding_mask=pad)
        ref = _reference(*qkv, layout, kind, 3, pad)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        grad = torch.randn_like(out)
        for g, w in zip(torch.autograd.grad(out, qkv, grad), torch.autograd.grad(ref, qkv, grad)):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
