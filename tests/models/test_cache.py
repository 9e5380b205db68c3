"""Incremental decoding through the KV cache gives the teacher-forced logits (fp32, atol 1e-4)."""

from __future__ import annotations

import pytest
import torch

from tests.models.conftest import PATTERNS, tiny_model

ATOL = 1e-4


def incremental_logits(model, direction: str, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefill the source, then feed the teacher-forced target one position at a time."""
    x, pad, layout, labels = model._stream(direction, batch)
    S, B = layout.source_length, x.shape[0]
    pad = pad if pad is not None else torch.zeros(B, layout.length, dtype=torch.bool)
    cache = model.new_cache(B, layout)
    model._prefill(x[:, :S], pad[:, :S], cache, torch.arange(B))
    head = model.image_head if direction == "txt2img" else model.text_head
    steps = [head(model._step(x[:, t], cache)) for t in range(S, layout.length)]
    return torch.stack(steps, 1), labels


@pytest.mark.parametrize("make_pattern", PATTERNS)
@pytest.mark.parametrize("direction", ["txt2img", "img2txt", "vqa"])
def test_cache_matches_full_forward(make_pattern, direction):
    model = tiny_model(make_pattern())
    g = torch.Generator().manual_seed(1)
    batch = model.dummy_batch(3, 7, (3, 4), vqa=True, generator=g)
    assert not batch["text_mask"].all() and not batch["question_mask"].all()  # padding is exercised
    batch["directions"] = [direction]
    with torch.no_grad():
        full = model(batch).logits[direction]
        inc, labels = incremental_logits(model, direction, batch)
    real = labels != -100
    assert inc.shape == full.shape
    torch.testing.assert_close(inc[real], full[real], atol=ATOL, rtol=0)


@pytest.mark.parametrize("make_pattern", PATTERNS[:2])
@pytest.mark.parametrize("direction", ["txt2img", "vqa"])
def test_cache_matches_full_forward_with_qk_norm(make_pattern, direction):
    """QK-norm normalises the cached keys once, when they are written: decoding still matches."""
    model = tiny_model(make_pattern(), qk_norm=True)
    with torch.no_grad():  # non-trivial norm gains and biases, so a missed norm cannot pass
        for block in model.layers:
            for norm in (block.q_norm, block.k_norm):
                norm.weight.uniform_(0.5, 2.0)
                norm.bias.normal_(0.0, 0.3)
    g = torch.Generator().manual_seed(4)
    batch = model.dummy_batch(3, 7, (3, 4), vqa=True, generator=g)
    batch["directions"] = [direction]
    with torch.no_grad():
        full = model(batch).logits[direction]
        inc, labels = incremental_logits(model, direction, batch)
        plain = tiny_model(make_pattern())
        plain.load_state_dict(model.state_dict(), strict=False)  # same weights, only the norms missing
        without_norms = plain(batch).logits[direction]
    real = labels != -100
    torch.testing.assert_close(inc[real], full[real], atol=ATOL, rtol=0)
    assert (full - without_norms).abs().max() > 1e-2  # the norms are really in the path


def test_sparse_decoding_gathers_keys():
    from tests.models.conftest import ReferenceSparsePattern

    model = tiny_model(ReferenceSparsePattern())
    cache = model.new_cache(2, __import__("vilgkit").layout.Layout.text_to_image(5, 3, 4))
    assert all(plan is not None for plan in cache.key_plan)  # row/column/conv layers all gather
    # the column layer's query at image slot (2, 1) sees the 5 text keys and slots (0,1), (1,1), (2,1)
    idx = cache.key_index(2, 5 + 2 * 4 + 1)
    assert idx.tolist() == [0, 1, 2, 3, 4, 5 + 1, 5 + 5, 5 + 9]


@pytest.mark.parametrize("make_pattern", PATTERNS[:2])
def test_padding_does_not_change_results(make_pattern):
    """The same prompt/question with more padding gives the same logits and samples."""
    model = tiny_model(make_pattern())
    g = torch.Generator().manual_seed(2)
    batch = model.dummy_batch(2, 5, (2, 3), vqa=True, generator=g)
    padded = dict(batch)
    for key in ("text", "question"):
        padded[f"{key}_ids"] = torch.nn.functional.pad(batch[f"{key}_ids"], (0, 3), value=model.pad_id)
        padded[f"{key}_mask"] = torch.nn.functional.pad(batch[f"{key}_mask"], (0, 3), value=False)
    with torch.no_grad():
        for direction in ("txt2img", "vqa"):
            a = model({**batch, "directions": [direction]}).logits[direction]
            b = model({**padded, "directions": [direction]}).logits[direction]
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    s1 = model.sample_images(batch["text_ids"], batch["text_mask"], (2, 3), generator=torch.Generator().manual_seed(3))
    s2 = model.sample_images(
        padded["text_ids"], padded["text_mask"], (2, 3), generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(s1, s2)
