"""The chunked token cross-entropy equals ``F.cross_entropy`` on fp32 logits (loss and gradient)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vilgkit.models import losses
from vilgkit.models.losses import token_cross_entropy


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_equals_cross_entropy(monkeypatch, dtype):
    monkeypatch.setattr(losses, "CHUNK_ROWS", 7)  # several chunks, the last one partial
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 10, 50, generator=g) * 3).to(dtype).requires_grad_()
    labels = torch.randint(0, 50, (3, 10), generator=g)
    labels[1, 4:] = -100  # ignored positions
    got = token_cross_entropy(logits, labels)
    (g_got,) = torch.autograd.grad(got * 2.5, logits)
    ref_in = logits.detach().double().requires_grad_()
    want = F.cross_entropy(ref_in.flatten(0, 1), labels.flatten(), ignore_index=-100)
    (g_want,) = torch.autograd.grad(want * 2.5, ref_in)
    tol = {torch.float32: 1e-5, torch.float64: 1e-6, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol)
    assert g_got.dtype == dtype
    torch.testing.assert_close(g_got.double(), g_want, atol=tol, rtol=tol)
    assert g_got[1, 4:].abs().max() == 0


def test_all_ignored_is_nan_and_shapes_are_checked():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    assert torch.isnan(token_cross_entropy(logits, torch.full((2, 3), -100)))
    with pytest.raises(ValueError, match="do not match"):
        token_cross_entropy(logits, torch.zeros(2, 4, dtype=torch.long))
