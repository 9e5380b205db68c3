"""The metric contract used by the evaluation harness (``Evaluate`` stage and ``vilgkit eval``).

A metric accumulates over batches (``update``) and reports named numbers (``compute``). Each metric
declares the task it scores and the inputs its ``update`` takes, so the harness can feed every
selected metric from one generation pass without knowing the metric::

    text2image: generated  (images [B, 3, H, W] in [-1, 1]), real (images), prompts, scenes
    image2text: predictions (captions), references (list of reference lists), scenes
    vqa:        predictions (answers), answers (reference answers), questions

``key`` groups metrics under the names ``vilgkit eval --metrics`` accepts (``fid``, ``caption``,
``vqa``, ``shapes``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

TASKS = ("text2image", "image2text", "vqa")


class Metric(ABC):
    """An accumulating evaluation metric.

    Class attributes:
        key: the ``--metrics`` name this metric answers to.
        task: ``"text2image"``, ``"image2text"`` or ``"vqa"``.
        inputs: the keyword arguments :meth:`update` takes (the harness passes exactly these).
    """

    key: ClassVar[str]
    task: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]]

    def __init__(self) -> None:
        """A new metric has accumulated nothing: the state :meth:`reset` leaves (a subclass with
        settings stores them, then calls this)."""
        self.reset()

    @abstractmethod
    def reset(self) -> None:
        """Forget everything accumulated so far."""

    @abstractmethod
    def update(self, **inputs: Any) -> None:
        """Accumulate one batch (keyword arguments named in ``inputs``)."""

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """The metric's numbers, e.g. ``{"fid": 12.3}``; keys are unique across built-in metrics."""

    def settings(self) -> dict[str, Any]:
        """Settings that determine the numbers (written into the evaluation JSON)."""
        return {}


def check_lengths(**named: list) -> int:
    """All lists have the same length (returned); otherwise a ValueError naming them."""
    lengths = {name: len(value) for name, value in named.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"inputs have different lengths: {lengths}")
    return next(iter(lengths.values()), 0)
