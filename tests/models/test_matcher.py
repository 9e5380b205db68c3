"""The image–text matcher and its training objective (vilgkit.models.matcher, vilgkit.stages.train_matcher)."""

from __future__ import annotations

import pytest
import torch

from vilgkit.models.matcher import ImageTextMatcher
from vilgkit.stages.train_matcher import (
    MatcherTrainable,
    caption_similarity,
    exchanged,
    pasted_codes,
    substituted,
)

BOS, EOS, PAD = 1, 2, 0


def _texts(rows: list[list[int]], width: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(rows), width), PAD)
    for i, row in enumerate(rows):
        framed = [BOS, *row, EOS]
        ids[i, : len(framed)] = torch.tensor(framed)
    return ids, ids != PAD


def test_scores_do_not_depend_on_padding_or_the_pad_id():
    torch.manual_seed(0)
    matcher = ImageTextMatcher(
        12, torch.randn(10, 4), max_text_len=8, max_image_grid=2, hidden_size=16, num_heads=2
    ).eval()
    ids, mask = _texts([[3, 4], [5, 6, 7]])
    codes = torch.randint(0, 10, (2, 2, 2))
    wide_ids = torch.cat([ids, torch.full((2, 2), 9)], dim=1)  # two more columns of junk, masked out
    wide_mask = torch.cat([mask, torch.zeros(2, 2, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(matcher(ids, mask, codes), matcher(wide_ids, wide_mask, codes))


def test_rewritten_negatives_differ_from_the_text_only_inside_bos_eos():
    torch.manual_seed(0)
    ids, mask = _texts([[3, 4, 5], [3, 6, 5]])
    swapped = exchanged(ids, mask)
    assert not torch.equal(swapped[0], ids[0]) and sorted(swapped[0].tolist()) == sorted(ids[0].tolist())
    assert swapped[:, 0].eq(BOS).all() and (swapped == EOS).sum() == 2
    other = substituted(ids, mask, ids.flip(0), mask.flip(0))
    assert other[0].tolist() == [BOS, 3, 6, 5, EOS, PAD]  # the one position where they differ
    single, single_mask = _texts([[3]])
    assert torch.equal(exchanged(single, single_mask), single)  # nothing to exchange


def test_duplicate_captions_are_never_negatives():
    ids, mask = _texts([[3, 4], [3, 4], [3, 5]])
    similar = caption_similarity(ids, mask, 12)
    assert torch.isinf(similar.diagonal()).all()
    assert similar[0, 1] == float("-inf") and similar[0, 2] > 0


def test_a_trained_matcher_picks_the_image_its_text_describes():
    """A world with a known answer: text ``[a, b]`` describes the 2x2 grid ``[[a, b], [a, a]]``.
    Each candidate set holds the true grid, the grid of the same two codes with their roles
    swapped (only which code goes where tells them apart) and a grid with another second code."""
    torch.manual_seed(0)
    vocab, codes_n = 3 + 6, 6

    def grid(a: int, b: int) -> torch.Tensor:
        return torch.tensor([[a, b], [a, a]])

    pairs = [(a, b) for a in range(codes_n) for b in range(codes_n) if a != b]
    ids, mask = _texts([[3 + a, 3 + b] for a, b in pairs], width=4)
    images = torch.stack([grid(a, b) for a, b in pairs])
    matcher = ImageTextMatcher(vocab, torch.eye(codes_n), max_text_len=4, max_image_grid=2, hidden_size=32, num_heads=2)
    trainable = MatcherTrainable(matcher, image_negatives=4, text_negatives=2)

    def batch() -> dict[str, torch.Tensor]:
        pick = torch.randperm(len(pairs))[:16]
        return {"codes": images[pick], "text_ids": ids[pick], "text_mask": mask[pick]}

    _fit(trainable, batch)
    right = _true_image_ranked_first(matcher, ids, mask, pairs, grid, codes_n)
    assert right >= 0.9 * len(pairs), f"{right}/{len(pairs)}"


def _fit(trainable: MatcherTrainable, batch, steps: int = 150) -> None:
    """``steps`` AdamW steps on ``batch()``, then eval mode."""
    opt = torch.optim.AdamW(trainable.parameters(), lr=3e-3)
    for _ in range(steps):
        losses = trainable(batch())
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    trainable.matcher.eval()


def _true_image_ranked_first(matcher, ids, mask, pairs, render, colours: int) -> int:
    """How many texts ``[a, b]`` score ``render(a, b)`` above the swapped ``render(b, a)`` and
    ``render(a, other)``."""
    right = 0
    for i, (a, b) in enumerate(pairs):
        other = next(c for c in range(colours) if c not in (a, b))
        candidates = torch.stack([render(b, a), render(a, other), render(a, b)])
        with torch.no_grad():
            scores = matcher(ids[i : i + 1].expand(3, -1), mask[i : i + 1].expand(3, -1), candidates)
        right += int(scores.argmax()) == 2
    return right


def test_a_pasted_block_is_the_donors_object_and_an_empty_donor_changes_nothing():
    torch.manual_seed(0)
    codes = torch.zeros(40, 4, 4, dtype=torch.long)
    donors = torch.zeros(40, 4, 4, dtype=torch.long)
    donors[:20, 1, 2] = 7  # a one-code object on background 0; the last 20 donors are background only
    out = pasted_codes(codes, donors)
    assert torch.equal(out[20:], codes[20:])
    changed = out[:20] != 0
    assert changed.flatten(1).any(1).all()  # every paste carried the object code …
    assert set(out[:20].unique().tolist()) == {0, 7} and changed.flatten(1).sum(1).max() == 1  # … and only it


def test_patch_negatives_teach_a_matcher_to_reject_a_stray_object():
    """Text ``[a]`` describes a 3x3 grid of background 0 with the one object code ``a`` at a
    place. The candidates are the true grid and the same grid with a stray second object: scene
    negatives alone never show a stray object, pasted-code negatives do."""
    torch.manual_seed(0)
    objects, places = list(range(1, 6)), [(y, x) for y in range(3) for x in range(3)]

    def scene(a: int, place: tuple[int, int]) -> torch.Tensor:
        grid = torch.zeros(3, 3, dtype=torch.long)
        grid[place] = a
        return grid

    rows = [(a, place) for a in objects for place in places]
    ids, mask = _texts([[3 + a] for a, _ in rows], width=3)
    images = torch.stack([scene(a, place) for a, place in rows])
    matcher = ImageTextMatcher(3 + 6, torch.eye(6), max_text_len=3, max_image_grid=3, hidden_size=32, num_heads=2)
    trainable = MatcherTrainable(matcher, image_negatives=2, text_negatives=1, patch_negatives=2)

    def batch() -> dict[str, torch.Tensor]:
        pick = torch.randperm(len(rows))[:16]
        return {"codes": images[pick], "text_ids": ids[pick], "text_mask": mask[pick]}

    _fit(trainable, batch)
    right = 0
    for i, (a, place) in enumerate(rows):
        stray = images[i].clone()
        other_place = places[(places.index(place) + 4) % len(places)]
        stray[other_place] = objects[(objects.index(a) + 1) % len(objects)]
        candidates = torch.stack([stray, images[i]])
        with torch.no_grad():
            scores = matcher(ids[i : i + 1].expand(2, -1), mask[i : i + 1].expand(2, -1), candidates)
        right += int(scores.argmax()) == 1
    assert right >= 0.9 * len(rows), f"{right}/{len(rows)}"


def test_a_pixels_matcher_with_patch_negatives_needs_a_decoder():
    matcher = ImageTextMatcher(12, None, 8, 2, hidden_size=16, num_heads=2, image_input="pixels")
    with pytest.raises(ValueError, match="needs decode"):
        MatcherTrainable(matcher, patch_negatives=1)


def test_the_trainable_needs_two_samples_or_text_to_rewrite():
    matcher = ImageTextMatcher(12, torch.randn(10, 4), max_text_len=8, max_image_grid=2, hidden_size=16, num_heads=2)
    ids, mask = _texts([[3]])
    with pytest.raises(ValueError, match="at least two samples"):
        MatcherTrainable(matcher)({"codes": torch.zeros(1, 2, 2, dtype=torch.long), "text_ids": ids, "text_mask": mask})


def _two_square_image(left: int, right: int) -> torch.Tensor:
    """A 16-px image: a square of colour ``left`` in the left half, one of colour ``right`` in the right."""
    palette = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
    image = torch.full((3, 16, 16), -1.0)
    image[:, 4:12, 1:7] = palette[left][:, None, None]
    image[:, 4:12, 9:15] = palette[right][:, None, None]
    return image


def test_a_pixel_matcher_learns_which_colour_is_on_which_side():
    """Text ``[a, b]`` says "colour a on the left, colour b on the right". Each candidate set holds
    the true image, the same two colours on the other sides and one with another right colour."""
    torch.manual_seed(0)
    pairs = [(a, b) for a in range(3) for b in range(3) if a != b]
    ids, mask = _texts([[3 + a, 3 + b] for a, b in pairs], width=4)
    images = torch.stack([_two_square_image(a, b) for a, b in pairs])
    matcher = ImageTextMatcher(
        6, None, max_text_len=4, max_image_grid=2, hidden_size=32, num_heads=2, image_input="pixels"
    )
    # every other image is a negative: with fewer, which of the tied one-colour-shared images are
    # drawn decides whether the test's third candidate was ever seen as one
    trainable = MatcherTrainable(matcher, image_negatives=5, text_negatives=2)
    _fit(trainable, lambda: {"image": images, "text_ids": ids, "text_mask": mask})
    right = _true_image_ranked_first(matcher, ids, mask, pairs, _two_square_image, 3)
    assert right == len(pairs), f"{right}/{len(pairs)}"
    uint8 = ((images + 1) * 127.5).round().to(torch.uint8)  # the stage's cache stores uint8 pixels
    with torch.no_grad():
        torch.testing.assert_close(matcher(ids, mask, uint8), matcher(ids, mask, images), atol=1e-4, rtol=0)


def test_a_matcher_rejects_the_other_input_kind():
    codes_matcher = ImageTextMatcher(12, torch.randn(10, 4), 8, 2, hidden_size=16, num_heads=2)
    pixel_matcher = ImageTextMatcher(12, None, 8, 2, hidden_size=16, num_heads=2, image_input="pixels")
    ids, mask = _texts([[3]])
    with pytest.raises(ValueError, match="codes matcher reads"):
        codes_matcher(ids, mask, torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="pixels matcher reads"):
        pixel_matcher(ids, mask, torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="needs code_table"):
        ImageTextMatcher(12, None, 8, 2, hidden_size=16, num_heads=2)
    assert pixel_matcher.config()["image_input"] == "pixels" and pixel_matcher.reads_pixels
