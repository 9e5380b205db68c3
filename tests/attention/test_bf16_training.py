"""The sparse schedule trains under bf16 autocast on the CPU (the combination of
``recipes/ernievilg_lite_e2e.yaml``): the block-wise kernel used to fail assembling bf16 tiles into
its fp32 output (``index_copy_(): … Float and … BFloat16``) in column and conv layers."""

from __future__ import annotations

import torch

from vilgkit.layout import Layout
from vilgkit.models import UnifiedTransformer
from vilgkit.testing.tiny import tiny_generator
from vilgkit_attention import SparseAttention


def _model() -> UnifiedTransformer:
    # 4 layers: row, row, column, conv (the paper's schedule); a 4x4 grid so conv tiles reorder queries
    attention = SparseAttention(kernel_size=3, schedule="paper", backend="blockwise", conv_tile=2)
    return tiny_generator(num_layers=4, max_text_len=8, attention=attention)


def _batch(model: UnifiedTransformer) -> dict:
    return model.dummy_batch(4, 6, (4, 4), generator=torch.Generator().manual_seed(1))


def _loss(model, batch, bf16: bool) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return model(batch).losses["loss"]


def test_sparse_schedule_trains_under_bf16_autocast():
    model, batch = _model(), None
    batch = _batch(model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = _loss(model, batch, bf16=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0] - 0.3, losses  # one batch, repeated: the loss must fall clearly


def test_bf16_gradients_are_close_to_fp32():
    model = _model()
    batch = _batch(model)
    grads = {}
    for bf16 in (False, True):
        model.zero_grad(set_to_none=True)
        _loss(model, batch, bf16).backward()
        grads[bf16] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    ref, got = grads[False], grads[True]
    assert torch.isfinite(got).all()
    # bf16 keeps 8 mantissa bits: the whole gradient vector agrees to a few per cent
    rel = (got - ref).norm() / ref.norm()
    assert rel < 0.05, float(rel)
    assert torch.nn.functional.cosine_similarity(got, ref, dim=0) > 0.999


def test_blockwise_under_autocast_matches_fp32_kernel():
    """The kernel itself computes in fp32 under autocast: its output equals the fp32 call's (rounded to bf16)."""
    layout = Layout.text_to_image(5, 4, 4)
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 2, layout.length, 8, dtype=torch.bfloat16) for _ in range(3))
    for kind in ("row", "column", "conv"):
        pattern = SparseAttention(kernel_size=3, schedule=kind, backend="blockwise", conv_tile=2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = pattern.attend(q, k, v, layer=0, num_layers=1, layout=layout)
        want = pattern.attend(q.float(), k.float(), v.float(), layer=0, num_layers=1, layout=layout)
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want, atol=1e-2, rtol=1e-2)
