"""The decoding GEMV layouts give ``linear(x)``'s numbers and never serve stale weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vilgkit import dispatch
from vilgkit.models import gemv
from vilgkit.models.gemv import decode_linear


@pytest.fixture(autouse=True)
def tiny_layers_too(monkeypatch):
    monkeypatch.setattr(gemv, "MIN_WEIGHT_NUMEL", 1)  # these tests' layers are far below the real threshold
    with dispatch.forced(gemv_few="split", gemv_many="split"):  # the split layouts, whatever this machine chose
        yield


@pytest.fixture
def bmm_calls(monkeypatch):
    """Counts ``torch.bmm``/``torch.baddbmm`` calls from Python: the fast paths use them, ``F.linear`` does not."""
    calls = []

    def counting(real):
        def call(*args, **kwargs):
            calls.append(1)
            return real(*args, **kwargs)

        return call

    for name in ("bmm", "baddbmm"):
        monkeypatch.setattr(torch, name, counting(getattr(torch, name)))
    return calls


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("num_threads", [1, 2, 3])
@pytest.mark.parametrize("shape", [(1, 24), (3, 1, 24), (16, 24)])
def test_equals_linear(threads, num_threads, shape):
    threads(num_threads)
    torch.manual_seed(0)
    layer = nn.Linear(24, 30)  # 30 outputs: 3 threads → 3 slices, 2 → 2
    x = torch.randn(*shape)
    with torch.no_grad():
        expect = layer(x)
        got = decode_linear(layer, x)
    assert got.shape == expect.shape
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("num_threads", "rows"), [(1, 1), (2, 1), (2, 8)])  # copy; view of the weight; copy
def test_rebuilds_after_in_place_update_and_dtype_change(threads, num_threads, rows):
    threads(num_threads)
    torch.manual_seed(0)
    layer = nn.Linear(8, 6)
    x = torch.randn(rows, 8)
    with torch.no_grad():
        decode_linear(layer, x)
        layer.weight.mul_(-2.0)  # what an optimizer step or load_state_dict does: in place
        torch.testing.assert_close(decode_linear(layer, x), layer(x))
        layer.load_state_dict({"weight": torch.randn(6, 8), "bias": torch.randn(6)})
        torch.testing.assert_close(decode_linear(layer, x), layer(x))
        layer.to(torch.float64)
        got = decode_linear(layer, x.double())
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, layer(x.double()))


@pytest.mark.parametrize("num_threads", [1, 2])
def test_falls_back_to_linear_with_autograd_many_rows_or_dispatch(threads, bmm_calls, num_threads):
    threads(num_threads)
    torch.manual_seed(0)
    layer = nn.Linear(8, 6)
    out = decode_linear(layer, torch.randn(2, 8))  # grad enabled, trainable weight: plain linear
    assert out.requires_grad and out.grad_fn is not None
    assert not bmm_calls and not hasattr(layer, gemv._PACK)
    with torch.no_grad():
        decode_linear(layer, torch.randn(gemv.MAX_ROWS + 1, 8))
        with dispatch.forced(gemv_few="linear"):
            decode_linear(layer, torch.randn(1, 8))
        assert not bmm_calls and not hasattr(layer, gemv._PACK)
        decode_linear(layer, torch.randn(1, 8))
        assert len(bmm_calls) == 1
        assert hasattr(layer, gemv._PACK) == (num_threads == 1)  # two threads read a view: no copy
        with dispatch.forced(gemv_many="linear"):
            decode_linear(layer, torch.randn(gemv.FEW_ROWS + 1, 8))
        assert len(bmm_calls) == 1
        decode_linear(layer, torch.randn(gemv.FEW_ROWS + 1, 8))  # several rows: the transposed copy
        assert len(bmm_calls) == 2 and hasattr(layer, gemv._PACK)
        del bmm_calls[:]
        small = nn.Linear(8, 6)
        gemv.MIN_WEIGHT_NUMEL = 49  # 48 weights: below it, plain linear (the fixture's monkeypatch restores it)
        decode_linear(small, torch.randn(1, 8))
        assert not bmm_calls
    assert gemv._PACK not in layer.state_dict()  # not state: checkpoints are unchanged


def test_sampling_is_the_same_with_and_without_the_split_layout(monkeypatch, threads, bmm_calls):
    """Whole decoding runs: same codes and captions with the layout on and off (2 slices)."""
    from vilgkit.models.unified import UnifiedTransformer

    threads(2)
    torch.manual_seed(0)
    model = UnifiedTransformer(**UnifiedTransformer.conformance_args()).eval()
    batch = model.dummy_batch(2, 5, (2, 3), generator=torch.Generator().manual_seed(1))

    def run():
        codes = model.sample_images(
            batch["text_ids"],
            batch["text_mask"],
            (2, 3),
            num_candidates=2,
            top_k=4,
            generator=torch.Generator().manual_seed(3),
        )
        text = model.generate_text(batch["codes"], max_length=6)
        return codes, text

    fast = run()
    assert bmm_calls  # the row-split path was used
    del bmm_calls[:]
    with dispatch.forced(gemv_few="linear", gemv_many="linear"):
        slow = run()
    assert not bmm_calls
    assert torch.equal(fast[0], slow[0])
    assert fast[1] == slow[1]
