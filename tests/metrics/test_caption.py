"""Caption metrics equal pycocoevalcap's own numbers (word level via PTB; character level for Chinese)."""

from __future__ import annotations

import shutil

import pytest

from vilgkit.metrics import CaptionMetrics, caption_scores, char_tokenize

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's METEOR/PTB need Java")

EN_PRED = [
    "A large red circle at the top left.",
    "a small blue square in the centre and a green star",
    "two yellow triangles",
    "",
]
EN_REFS = [
    ["a large red circle at the top left", "there is a big red circle in the top left corner"],
    ["a small blue square in the centre and a small green star at the bottom", "a blue square, a green star"],
    ["a yellow triangle at the right and a yellow triangle at the left"],
    ["a white star at the bottom right"],
]
ZH_PRED = ["左上角有一个大的红色圆形。", "中间有一个小的蓝色正方形", "右边有两个黄色三角形"]
ZH_REFS = [
    ["左上角有一个大的红色圆形", "一个大的红色圆形在左上角"],
    ["中间有一个小的蓝色正方形，下面有一个绿色星形"],
    ["右边有一个黄色三角形，左边有一个黄色三角形"],
]


def _reference_scores(gts, res):
    """pycocoevalcap's scorers called directly (how its COCOEvalCap does it)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    from vilgkit.metrics.caption import meteor_score  # pycocoevalcap's Meteor, one shared JVM

    return {
        "bleu4": Bleu(4).compute_score(gts, res, verbose=0)[0][3],
        "meteor": meteor_score(gts, res)[0],
        "rouge_l": Rouge().compute_score(gts, res)[0],
        "cider": Cider().compute_score(gts, res)[0],
    }


def test_word_level_equals_pycocoevalcap():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # One JVM start for both sides (PTB tokenises line by line, so batching does not change tokens).
    n = len(EN_PRED)
    both = PTBTokenizer().tokenize(
        {
            **{i: [{"caption": c} for c in refs] for i, refs in enumerate(EN_REFS)},
            **{n + i: [{"caption": p if p else "."}] for i, p in enumerate(EN_PRED)},
        }
    )
    gts = {i: both[i] for i in range(n)}
    res = {i: both[n + i] for i in range(n)}
    expected = _reference_scores(gts, res)
    got = caption_scores(EN_PRED, EN_REFS, mode="word")
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key
    assert 0.2 < got["bleu4"] < 1 and got["cider"] > 0.5  # a sane, non-degenerate fixed set


def test_char_level_equals_pycocoevalcap_on_spaced_characters():
    # Character level: each Chinese character is a token; punctuation dropped; no PTB tokenizer.
    spaced = lambda s: " ".join(ch for ch in s if ch not in "。，")  # noqa: E731
    gts = {i: [spaced(r) for r in refs] for i, refs in enumerate(ZH_REFS)}
    res = {i: [spaced(p)] for i, p in enumerate(ZH_PRED)}
    expected = _reference_scores(gts, res)
    metric = CaptionMetrics(mode="auto")
    metric.update(ZH_PRED[:2], ZH_REFS[:2])
    metric.update(ZH_PRED[2:], ZH_REFS[2:])
    assert metric.resolved_mode() == "char"
    got = metric.compute()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key
    # The first caption equals a reference up to punctuation: a perfect sentence-level ROUGE-L.
    single = caption_scores(ZH_PRED[:1], ZH_REFS[:1], mode="char", metrics=("rouge_l",))
    assert single["rouge_l"] == pytest.approx(1.0)


def test_char_level_gives_partial_credit_for_chinese():
    # Unspaced Chinese would be one "word" per sentence (BLEU ~0); characters give partial credit.
    char = caption_scores(ZH_PRED, ZH_REFS, mode="char", metrics=("bleu4",))["bleu4"]
    assert char > 0.3


def test_char_tokenize():
    assert char_tokenize("左上角有1个 Red 圆。") == "左 上 角 有 1 个 red 圆"
    assert char_tokenize("ＡＢ，中文！") == "ab 中 文"
    assert char_tokenize("  ") == ""


def test_bad_caption_input():
    with pytest.raises(ValueError, match="different lengths"):
        caption_scores(["a"], [["a"], ["b"]], metrics=("bleu4",), mode="char")
    with pytest.raises(ValueError, match="non-empty list"):
        caption_scores(["a"], [[]], metrics=("bleu4",), mode="char")
    with pytest.raises(ValueError, match="unknown caption metric"):
        CaptionMetrics(metrics=["spice"])
    with pytest.raises(ValueError, match="mode"):
        CaptionMetrics(mode="words")
