"""The paper's three human-evaluation protocols, with its exact criteria and scales.

* ``text2image`` (Table 2): each generated image is scored for image clarity, texture quality and
  relevance to the text, 1 to 5; three evaluators per image.
* ``caption`` (Table 5): each generated caption is scored for fluency (is it fluent?), relevance (is
  it related to the image?) and richness (does it describe the whole content?), 0 to 2.
* ``vqa`` (Table 6): a Turing test — the evaluator judges whether the answer was given by a machine
  or a human (passing: judged human) — and answer quality, 0 to 2. As in the paper, human answers
  (the data's ground truth) are rated alongside, blind, to calibrate the evaluators.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Criterion:
    """One question asked about every item: ``key``, its wording, and the allowed integer scores."""

    key: str
    label: str
    question: str
    low: int
    high: int
    labels: tuple[str, ...] = ()  # one per score, when the scale has named points

    @property
    def scores(self) -> list[int]:
        return list(range(self.low, self.high + 1))

    def check(self, score: object) -> int:
        """The score as an int, or ``ValueError`` naming the allowed ones."""
        if isinstance(score, bool) or not isinstance(score, int) or not self.low <= score <= self.high:
            raise ValueError(f"{self.key}: {score!r}; allowed: an integer from {self.low} to {self.high}")
        return score


@dataclass(frozen=True)
class Protocol:
    """A campaign's kind: what is shown (``task``) and the criteria every rater scores."""

    name: str
    title: str
    table: str
    criteria: tuple[Criterion, ...]

    def criterion(self, key: str) -> Criterion:
        for c in self.criteria:
            if c.key == key:
                return c
        raise KeyError(key)


TEXT2IMAGE = Protocol(
    "text2image",
    "Text → image",
    "Table 2 (average scores, 1–5)",
    (
        Criterion("clarity", "Image clarity", "How clear is the image?", 1, 5),
        Criterion("texture", "Texture quality", "How good is the texture of the image?", 1, 5),
        Criterion(
            "relevance",
            "Relevance to the text",
            "How well does the image match the text?",
            1,
            5,
        ),
    ),
)
CAPTION = Protocol(
    "caption",
    "Image → text",
    "Table 5 (scores 0–2, higher is better)",
    (
        Criterion(
            "fluency",
            "Fluency",
            "Is the caption fluent?",
            0,
            2,
            ("no", "partly", "yes"),
        ),
        Criterion(
            "relevance",
            "Relevance",
            "Is the caption related to the image?",
            0,
            2,
            ("no", "partly", "yes"),
        ),
        Criterion(
            "richness",
            "Richness",
            "Does the caption adequately describe the whole image?",
            0,
            2,
            ("no", "partly", "yes"),
        ),
    ),
)
VQA = Protocol(
    "vqa",
    "Visual question answering",
    "Table 6 (Turing test pass rate, answer quality 0–2)",
    (
        Criterion(
            "turing",
            "Turing test",
            "Was this answer given by a human or a machine?",
            0,
            1,
            ("machine", "human"),
        ),
        Criterion(
            "quality",
            "Answer quality",
            "How good is the answer?",
            0,
            2,
            ("bad", "partly right", "good"),
        ),
    ),
)
PROTOCOLS = {p.name: p for p in (TEXT2IMAGE, CAPTION, VQA)}
