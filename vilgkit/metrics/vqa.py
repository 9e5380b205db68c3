"""Generative VQA scoring: exact match and normalised-answer accuracy.

Normalisation (applied to prediction and reference alike) follows the spirit of the VQA v2
evaluation script, extended to Chinese:

* Unicode NFKC (full-width letters/digits → ASCII), lower-case;
* punctuation removed, ASCII and full-width/Chinese alike (``，。？！：；、“”‘’（）《》…``), except a
  decimal point between digits;
* English articles (a, an, the) dropped; number words → digits (``"three"`` → ``"3"``,
  ``"三"``/``"三个"`` → ``"3"``);
* whitespace collapsed.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, ClassVar

from vilgkit.metrics.base import Metric, check_lengths
from vilgkit.registry import METRICS

_EN_NUMBERS = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}
_ZH_DIGITS = {
    "零": 0,
    "〇": 0,
    "一": 1,
    "二": 2,
    "两": 2,
    "三": 3,
    "四": 4,
    "五": 5,
    "六": 6,
    "七": 7,
    "八": 8,
    "九": 9,
}
_ARTICLES = {"a", "an", "the"}
# A Chinese numeral (up to 99) optionally followed by a measure word: 三, 三个, 十二, 二十, 两个.
_ZH_NUMBER = re.compile(r"([零〇一二两三四五六七八九十]+)(个|只|件|块|颗)?")
_DECIMAL = re.compile(r"(?<=\d)\.(?=\d)")


def _zh_to_int(numeral: str) -> int | None:
    if "十" not in numeral:
        return _ZH_DIGITS[numeral] if len(numeral) == 1 else None
    tens, _, ones = numeral.partition("十")
    if len(tens) > 1 or len(ones) > 1 or "十" in ones:
        return None
    return (_ZH_DIGITS[tens] if tens else 1) * 10 + (_ZH_DIGITS[ones] if ones else 0)


def _zh_numbers(text: str) -> str:
    def repl(match: re.Match) -> str:
        value = _zh_to_int(match.group(1))
        return f" {value} " if value is not None else match.group(0)

    return _ZH_NUMBER.sub(repl, text)


def normalize_answer(answer: str) -> str:
    """Canonical form of an answer for the normalised accuracy (see the module docstring).

    Examples:
        >>> normalize_answer("The Three!")
        '3'
        >>> normalize_answer("三个。")
        '3'
        >>> normalize_answer("Ｒｅｄ，")
        'red'
    """
    text = unicodedata.normalize("NFKC", answer).lower()
    text = _DECIMAL.sub("\ue000", text)  # protect 1.5 from punctuation removal (private-use char)
    text = "".join(" " if unicodedata.category(ch).startswith(("P", "S")) else ch for ch in text)
    text = text.replace("\ue000", ".")
    text = _zh_numbers(text)
    words = [_EN_NUMBERS.get(w, w) for w in text.split() if w not in _ARTICLES]
    return " ".join(words)


def vqa_scores(predictions: list[str], answers: list[str] | list[list[str]]) -> dict[str, float]:
    """Exact match and normalised accuracy; a prediction is right if it matches any reference.

    Args:
        predictions: one generated answer per question.
        answers: the reference answer of each question, or a list of acceptable answers.

    Returns:
        ``{"vqa_exact_match": …, "vqa_accuracy": …, "vqa_count": n}`` (fractions in [0, 1]).
    """
    n = check_lengths(predictions=predictions, answers=answers)
    if n == 0:
        raise ValueError("no answers to score")
    exact = normalised = 0
    for pred, refs in zip(predictions, answers):
        refs = [refs] if isinstance(refs, str) else list(refs)
        if not refs:
            raise ValueError("every question needs at least one reference answer")
        exact += any(pred.strip() == r.strip() for r in refs)
        norm = normalize_answer(pred)
        normalised += any(norm == normalize_answer(r) for r in refs)
    return {"vqa_exact_match": exact / n, "vqa_accuracy": normalised / n, "vqa_count": float(n)}


@METRICS.register_module()
class VQAAccuracy(Metric):
    """Exact-match and normalised-answer accuracy of generated VQA answers (task ``vqa``)."""

    key: ClassVar[str] = "vqa"
    task: ClassVar[str] = "vqa"
    inputs: ClassVar[tuple[str, ...]] = ("predictions", "answers")

    def reset(self) -> None:
        self._predictions: list[str] = []
        self._answers: list[Any] = []

    def update(self, predictions: list[str], answers: list[str] | list[list[str]]) -> None:  # type: ignore[override]
        check_lengths(predictions=predictions, answers=answers)
        self._predictions.extend(predictions)
        self._answers.extend(answers)

    def compute(self) -> dict[str, float]:
        return vqa_scores(self._predictions, self._answers)

    def settings(self) -> dict[str, Any]:
        return {"normalisation": "NFKC, lower-case, punctuation, articles, number words -> digits (en, zh)"}
