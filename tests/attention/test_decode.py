"""Decoding with a KV cache: gathering only ``decode_keys`` equals the full-mask computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vilgkit.layout import Layout
from vilgkit.models import DenseAttention
from vilgkit_attention import SparseAttention

from .conftest import LAYOUTS, reference_allowed

C, HEADS, LAYERS = 16, 2, 4


class TinyStack(nn.Module):
    """Residual attention blocks (qkv + out projections) driven by an AttentionPattern."""

    def __init__(self, pattern):
        super().__init__()
        self.pattern = pattern
        self.qkv = nn.ModuleList(nn.Linear(C, 3 * C) for _ in range(LAYERS))
        self.out = nn.ModuleList(nn.Linear(C, C) for _ in range(LAYERS))

    def heads(self, i, x):  # [B, N, C] -> 3 x [B, H, N, D]
        return [t.unflatten(-1, (HEADS, C // HEADS)).transpose(1, 2) for t in self.qkv[i](x).chunk(3, -1)]

    def merge(self, i, x, attn):
        return x + self.out[i](attn.transpose(1, 2).flatten(2))

    def forward(self, x, layout, pad, use_pattern_attend):
        """Teacher forcing: the pattern's fast path, or SDPA with the literal oracle."""
        for i in range(LAYERS):
            q, k, v = self.heads(i, x)
            if use_pattern_attend:
                attn = self.pattern.attend(q, k, v, layer=i, num_layers=LAYERS, layout=layout, key_padding_mask=pad)
            else:
                kind = self.pattern.kind(i, LAYERS) if isinstance(self.pattern, SparseAttention) else "dense"
                mask = reference_allowed(layout, kind, 3)[None, None] & ~pad[:, None, None, :]
                attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = self.merge(i, x, attn)
        return x

    def decode(self, x, layout, pad):
        """Prefill the source, then one target position at a time from a KV cache."""
        src, n = layout.source_length, layout.length
        caches = [[torch.zeros(x.shape[0], HEADS, n, C // HEADS) for _ in range(2)] for _ in range(LAYERS)]
        h = x[:, :src]
        for i in range(LAYERS):  # prefill: the source only sees the source
            q, k, v = self.heads(i, h)
            caches[i][0][:, :, :src], caches[i][1][:, :, :src] = k, v
            mask = self.pattern.allowed(i, LAYERS, layout)[:src, :src][None, None] & ~pad[:, None, None, :src]
            h = self.merge(i, h, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
        outs, gathered = [h], []
        for p in range(src, n):
            h = x[:, p : p + 1]
            for i in range(LAYERS):
                q, k, v = self.heads(i, h)
                kc, vc = caches[i]
                kc[:, :, p : p + 1], vc[:, :, p : p + 1] = k, v
                idx = self.pattern.decode_keys(i, LAYERS, layout, p)
                if idx is None:
                    keys, values, valid = kc[:, :, : p + 1], vc[:, :, : p + 1], ~pad[:, : p + 1]
                else:
                    keys, values, valid = kc.index_select(2, idx), vc.index_select(2, idx), ~pad[:, idx]
                    gathered.append((p, len(idx)))
                attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=valid[:, None, None, :])
                h = self.merge(i, h, attn)
            outs.append(h)
        return torch.cat(outs, 1), gathered


def _stack_and_inputs(layout: Layout, pattern, seed: int) -> tuple[TinyStack, torch.Tensor, torch.Tensor]:
    """A seeded stack, inputs ``[2, N, C]`` and key padding where row 1 has a shorter caption / question
    (the last token of the first text segment, when there is one, is padding)."""
    torch.manual_seed(seed)
    model = TinyStack(pattern)
    x = torch.randn(2, layout.length, C)
    pad = torch.zeros(2, layout.length, dtype=torch.bool)
    text_src = [(o, s) for o, s in zip(layout.offsets(), layout.source) if s.kind == "text"]
    if text_src:
        pad[1, text_src[0][0] + text_src[0][1].length - 1] = True
    return model, x, pad


@pytest.mark.parametrize("layout_name", list(LAYOUTS))
@pytest.mark.parametrize("pattern", [SparseAttention(kernel_size=3), DenseAttention()], ids=["sparse", "dense"])
def test_cached_decoding_equals_full_mask(layout_name, pattern):
    layout = LAYOUTS[layout_name]
    model, x, pad = _stack_and_inputs(layout, pattern, seed=0)
    with torch.no_grad():
        ref = model(x, layout, pad, use_pattern_attend=False)
        fast = model(x, layout, pad, use_pattern_attend=True)
        dec, gathered = model.decode(x, layout, pad)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    # positions whose query is padding carry no meaning in either path; everything else must agree
    torch.testing.assert_close(dec, ref, atol=1e-5, rtol=1e-5)
    if isinstance(pattern, SparseAttention) and layout.target.kind == "image":
        assert gathered and all(k < p + 1 for p, k in gathered)  # sparse: fewer keys than the prefix
    else:
        assert not gathered


def test_decode_keys_for_fig2_rows():
    """Text + row so far / column so far / window so far (text 6, 4x4 image, 3x3 kernel)."""
    layout = Layout.text_to_image(6, 4, 4)
    text = list(range(6))
    pos = 6 + 1 * 4 + 2  # image token (1, 2)
    expect = {
        "row": text + [6 + 4, 6 + 5, 6 + 6],
        "column": text + [6 + 2, 6 + 6],
        "conv": text + [6 + 1, 6 + 2, 6 + 3, 6 + 5, 6 + 6],
    }
    for kind, want in expect.items():
        got = SparseAttention(kernel_size=3, schedule=kind).decode_keys(0, 1, layout, pos)
        assert got.tolist() == want, kind
    assert SparseAttention(schedule="dense").decode_keys(0, 1, layout, pos) is None
    assert SparseAttention().decode_keys(0, 1, Layout.image_to_text(4, 4, 6), 17) is None  # text target
    with pytest.raises(ValueError, match="not a target position"):
        SparseAttention().decode_keys(0, 1, layout, 3)


@pytest.mark.parametrize("layout_name", list(LAYOUTS))
@pytest.mark.parametrize(
    "pattern",
    [SparseAttention(kernel_size=3, schedule=["row", "column", "conv", "dense"]), DenseAttention()],
    ids=["sparse", "dense"],
)
def test_sparse_kv_cache_equals_full_mask(layout_name, pattern):
    """SparseKVCache (line buffers for row / column, gathers for conv, slices otherwise) = oracle."""
    from vilgkit_attention.decode import SparseKVCache

    layout = LAYOUTS[layout_name]
    model, x, pad = _stack_and_inputs(layout, pattern, seed=4)
    src, n = layout.source_length, layout.length
    with torch.no_grad():
        ref = model(x, layout, pad, use_pattern_attend=False)
        cache = SparseKVCache(pattern, layout, LAYERS, 2, HEADS, C // HEADS, pad)
        h = x[:, :src]
        for i in range(LAYERS):
            q, k, v = model.heads(i, h)
            cache.prefill(i, k, v)
            mask = pattern.allowed(i, LAYERS, layout)[:src, :src][None, None] & ~pad[:, None, None, :src]
            h = model.merge(i, h, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
        outs = [h]
        for p in range(src, n):
            h = x[:, p : p + 1]
            for i in range(LAYERS):
                h = model.merge(i, h, cache.attend(i, p, *model.heads(i, h)))
            outs.append(h)
    torch.testing.assert_close(torch.cat(outs, 1), ref, atol=1e-5, rtol=1e-5)
    if isinstance(pattern, SparseAttention) and layout.target.kind == "image":
        assert cache.kinds == ["row", "column", "gather", "slice"]
    else:
        assert set(cache.kinds) == {"slice"}
    with pytest.raises(ValueError, match="only source positions"):
        SparseKVCache(pattern, layout, LAYERS, 2, HEADS, C // HEADS, torch.ones(2, n, dtype=torch.bool))
