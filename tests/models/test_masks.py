"""The model's attention really follows docs/architecture.md §2: causal targets, bidirectional sources."""

from __future__ import annotations

import pytest
import torch

from tests.models.conftest import PATTERNS, ReferenceSparsePattern, reference_allowed, tiny_model
from vilgkit.layout import Layout
from vilgkit.models import DenseAttention

LAYOUTS = [Layout.text_to_image(5, 3, 4), Layout.image_to_text(3, 4, 6), Layout.vqa(2, 3, 4, 5)]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda lay: lay.direction + str(len(lay.source)))
def test_default_dense_pattern_is_the_reference(layout):
    expected = reference_allowed(layout, lambda *_: True)
    for layer in range(3):
        assert torch.equal(DenseAttention().allowed(layer, 3, layout), expected)


def _hidden(model, direction, batch):
    x, pad, layout, _ = model._stream(direction, {**batch, "directions": [direction]})
    return model._encode(x, layout, pad), layout


@pytest.mark.parametrize("make_pattern", PATTERNS[:2])
@pytest.mark.parametrize("direction", ["txt2img", "img2txt", "vqa"])
def test_target_is_causal_and_source_bidirectional(make_pattern, direction):
    model = tiny_model(make_pattern())
    batch = model.dummy_batch(2, 6, (3, 3), vqa=True, generator=torch.Generator().manual_seed(0))
    for key in ("text_mask", "question_mask", "answer_mask"):  # no padding: every position is real
        batch[key] = torch.ones_like(batch[key])
    with torch.no_grad():
        base, layout = _hidden(model, direction, batch)
        S, N = layout.source_length, layout.length
        # 1) change the target input at slot j: earlier target slots and the whole source are unchanged
        j = (N - S) // 2
        changed = dict(batch)
        if direction == "txt2img":
            codes = batch["codes"].clone().flatten(1)
            codes[:, j - 1] = (codes[:, j - 1] + 1) % model.image_vocab_size  # slot j holds code j-1
            changed["codes"] = codes.view_as(batch["codes"])
        else:
            key = "text_ids" if direction == "img2txt" else "answer_ids"
            ids = batch[key].clone()
            ids[:, j] = ids[:, j] % 20 + 5  # slot j holds id j; stays a non-special id
            changed[key] = ids
        after, _ = _hidden(model, direction, changed)
        torch.testing.assert_close(after[:, : S + j], base[:, : S + j], atol=1e-5, rtol=0)
        assert (after[:, S + j :] - base[:, S + j :]).abs().max() > 1e-3  # the change is seen from j on
        # 2) change the *last* source position: the *first* source position sees it (bidirectional)
        changed = dict(batch)
        if direction == "img2txt":
            codes = batch["codes"].clone()
            codes[:, -1, -1] = (codes[:, -1, -1] + 1) % model.image_vocab_size
            changed["codes"] = codes
        else:
            key = "text_ids" if direction == "txt2img" else "question_ids"
            ids = batch[key].clone()
            ids[:, -2] = ids[:, -2] % 20 + 5
            changed[key] = ids
        after, _ = _hidden(model, direction, changed)
        assert (after[:, 0] - base[:, 0]).abs().max() > 1e-4


def test_reference_sparse_pattern_is_sparse():
    """Sanity for the test oracle: row/column/conv layers really hide some image keys."""
    pattern, layout = ReferenceSparsePattern(), Layout.image_to_text(3, 3, 4)
    for layer in range(4):
        m = pattern.allowed(layer, 4, layout)
        assert not m[:9, :9].all() and m[:9, :9].diagonal().all()
        assert torch.equal(m[:9, :9], m[:9, :9].T)  # bidirectional over a source image
