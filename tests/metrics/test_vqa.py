"""VQA exact match and normalised accuracy."""

from __future__ import annotations

import pytest

from vilgkit.metrics import VQAAccuracy, normalize_answer, vqa_scores


@pytest.mark.parametrize(
    "raw, norm",
    [
        ("The Three!", "3"),
        ("two circles", "2 circles"),
        ("三个。", "3"),
        ("两个", "2"),
        ("十二只", "12"),
        ("二十一", "21"),
        ("Ｒｅｄ，", "red"),
        ("“蓝色”？", "蓝色"),
        ("  a   Red  circle. ", "red circle"),
        ("top-left", "top left"),
        ("1.5", "1.5"),
        ("an apple", "apple"),
    ],
)
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_vqa_scores_exact_vs_normalised():
    preds = ["red", "Red.", "three", "三个", "blue", "circle"]
    refs = ["red", "red", "3", "3", "green", ["square", "the circle"]]
    out = vqa_scores(preds, refs)
    assert out["vqa_exact_match"] == pytest.approx(1 / 6)
    assert out["vqa_accuracy"] == pytest.approx(5 / 6)
    assert out["vqa_count"] == 6


def test_vqa_metric_accumulates():
    metric = VQAAccuracy()
    metric.update(["yes"], ["yes"])
    metric.update(["No!"], ["no"])
    assert metric.compute() == {"vqa_exact_match": 0.5, "vqa_accuracy": 1.0, "vqa_count": 2.0}
    metric.reset()
    with pytest.raises(ValueError, match="no answers"):
        metric.compute()


def test_vqa_bad_input():
    with pytest.raises(ValueError, match="different lengths"):
        vqa_scores(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="at least one reference"):
        vqa_scores(["a"], [[]])
