"""SparseAttention oracle: every kind x direction against the literal docs/architecture.md §2 reference,
the paper's schedule, the Figure 2 configuration, and argument errors."""

from __future__ import annotations

import pytest
import torch

from vilgkit.layout import Layout
from vilgkit.registry import ATTENTION_PATTERNS
from vilgkit_attention import SparseAttention, paper_schedule

from .conftest import reference_allowed


@pytest.mark.parametrize("kind", ["dense", "row", "column", "conv"])
@pytest.mark.parametrize("kernel_size", [3, 5])
def test_oracle_matches_reference(layout, kind, kernel_size):
    pattern = SparseAttention(kernel_size=kernel_size, schedule=kind)
    assert torch.equal(pattern.allowed(0, 2, layout), reference_allowed(layout, kind, kernel_size))


def test_paper_schedule_rule():
    assert [paper_schedule(i, 8) for i in range(8)] == ["row", "row", "column", "row", "row", "row", "column", "conv"]
    assert paper_schedule(0, 1) == "conv"
    pattern = SparseAttention()
    assert [pattern.kind(i, 24) for i in (0, 1, 2, 3, 6, 10, 22, 23)] == [
        "row",
        "row",
        "column",
        "row",
        "column",
        "column",
        "column",
        "conv",
    ]


def test_list_schedule_and_layer_masks_differ():
    lay = Layout.text_to_image(2, 4, 4)
    pattern = SparseAttention(kernel_size=3, schedule=["row", "column", "conv", "dense"])
    masks = [pattern.allowed(i, 4, lay) for i in range(4)]
    for i, kind in enumerate(["row", "column", "conv", "dense"]):
        assert torch.equal(masks[i], reference_allowed(lay, kind, 3))
    with pytest.raises(ValueError, match="schedule lists 4 layers but the model has 3"):
        pattern.allowed(0, 3, lay)


def _fig2_expected_image_block(kind: str, causal: bool) -> torch.Tensor:
    """Figure 2 by hand: 4x4 grid, the 16x16 image-to-image block for each pattern."""
    out = torch.zeros(16, 16, dtype=torch.bool)
    for q in range(16):
        qr, qc = divmod(q, 4)
        for k in range(16):
            kr, kc = divmod(k, 4)
            ok = {"row": qr == kr, "column": qc == kc, "conv": abs(qr - kr) <= 1 and abs(qc - kc) <= 1}[kind]
            out[q, k] = ok and (k <= q or not causal)
    return out


@pytest.mark.parametrize("kind", ["row", "column", "conv"])
def test_figure2_configuration(kind):
    """Paper Fig. 2: text length 6, a 4x4 image, 3x3 kernel, both directions."""
    pattern = SparseAttention(kernel_size=3, schedule=kind)
    t2i = pattern.allowed(0, 1, Layout.text_to_image(6, 4, 4))
    assert t2i.shape == (22, 22)
    assert t2i[:6, :6].all() and not t2i[:6, 6:].any()  # text sees text only
    assert t2i[6:, :6].all()  # every image token sees all text
    assert torch.equal(t2i[6:, 6:], _fig2_expected_image_block(kind, causal=True))
    i2t = pattern.allowed(0, 1, Layout.image_to_text(4, 4, 6))
    assert torch.equal(i2t[:16, :16], _fig2_expected_image_block(kind, causal=False))  # bidirectional
    assert not i2t[:16, 16:].any()
    assert i2t[16:, :16].all() and torch.equal(i2t[16:, 16:], torch.ones(6, 6, dtype=torch.bool).tril())
    # counts a reader can check against the picture: e.g. the conv window of a corner token
    if kind == "conv":
        assert int(i2t[0, :16].sum()) == 4 and int(i2t[5, :16].sum()) == 9
        assert int(t2i[6 + 5, 6:].sum()) == 5  # (1,1): (0,0),(0,1),(0,2),(1,0),(1,1)


def test_vqa_question_sees_image_and_image_sees_question():
    pattern = SparseAttention(kernel_size=3, schedule="row")
    lay = Layout.vqa(3, 3, 2, 2)  # [image 9 | question 2 | answer 2]
    m = pattern.allowed(0, 1, lay)
    assert m[9:11, :11].all()  # question -> every source token
    assert m[:9, 9:11].all()  # image -> question
    assert int(m[0, :9].sum()) == 3  # image -> its row only
    assert not m[:11, 11:].any()


def test_registered_and_bad_arguments():
    assert ATTENTION_PATTERNS.get("SparseAttention") is SparseAttention
    with pytest.raises(ValueError, match="odd kernel_size"):
        SparseAttention(kernel_size=4)
    with pytest.raises(ValueError, match="unknown image attention kind"):
        SparseAttention(schedule=["row", "diagonal"])
    with pytest.raises(ValueError, match="must not be empty"):
        SparseAttention(schedule=[])
    with pytest.raises(ValueError, match="backend"):
        SparseAttention(backend="triton")
    with pytest.raises(ValueError, match="exactly one image segment"):
        SparseAttention().allowed(0, 1, Layout((), Layout.text_to_image(2, 2, 2).source[0]))
