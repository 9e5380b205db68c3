"""DenseAttention: oracle, SDPA path with padding, decode keys, errors."""

from __future__ import annotations

import pytest
import torch

from vilgkit.layout import Layout
from vilgkit.registry import ATTENTION_PATTERNS

from .conftest import reference_allowed


def test_dense_oracle_matches_reference(layout):
    pattern = ATTENTION_PATTERNS.get("DenseAttention")()
    for layer in range(3):
        assert torch.equal(pattern.allowed(layer, 3, layout), reference_allowed(layout, "dense"))


def test_dense_attend_matches_explicit_softmax_with_padding(layout):
    torch.manual_seed(0)
    pattern = ATTENTION_PATTERNS.get("DenseAttention")()
    b, h, d, n = 2, 3, 8, layout.length
    q, k, v = (torch.randn(b, h, n, d, dtype=torch.float64) for _ in range(3))
    pad = torch.zeros(b, n, dtype=torch.bool)
    # pad the last two positions of the first text segment of batch item 1
    off = next(o for o, s in zip(layout.offsets(), layout.segments) if s.kind == "text")
    seg_len = next(s.length for s in layout.segments if s.kind == "text")
    pad[1, off + seg_len - 2 : off + seg_len] = True
    out = pattern.attend(q, k, v, layer=0, num_layers=1, layout=layout, key_padding_mask=pad)
    mask = reference_allowed(layout, "dense")[None, None] & ~pad[:, None, None, :]
    scores = (q @ k.transpose(-1, -2)) / d**0.5
    ref = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    # padding changed item 1 and not item 0
    out_nopad = pattern.attend(q, k, v, layer=0, num_layers=1, layout=layout)
    torch.testing.assert_close(out[0], out_nopad[0])
    assert not torch.allclose(out[1], out_nopad[1])


def test_dense_decode_keys_is_slice_and_rejects_source_positions(layout):
    pattern = ATTENTION_PATTERNS.get("DenseAttention")()
    for p in range(layout.source_length, layout.length):
        assert pattern.decode_keys(0, 2, layout, p) is None
    with pytest.raises(ValueError, match="not a target position"):
        pattern.decode_keys(0, 2, layout, 0)


def test_dense_bad_arguments():
    pattern = ATTENTION_PATTERNS.get("DenseAttention")()
    lay = Layout.text_to_image(3, 2, 2)
    with pytest.raises(ValueError, match="out of range"):
        pattern.allowed(4, 4, lay)
    x = torch.randn(1, 1, 6, 4)
    with pytest.raises(ValueError, match="does not match the layout"):
        pattern.attend(x, x, x, layer=0, num_layers=1, layout=lay)
    x = torch.randn(1, 1, 7, 4)
    with pytest.raises(ValueError, match="key_padding_mask"):
        pattern.attend(x, x, x, layer=0, num_layers=1, layout=lay, key_padding_mask=torch.zeros(1, 7))
