"""Reranking with the run's own image–text matching model (the paper's approach, §4.2)."""

from __future__ import annotations

import torch

from vilgkit.interfaces import Reranker, RerankInputs
from vilgkit.registry import RERANKERS
from vilgkit.reranker_names import MATCHER_RERANKER_FOR
from vilgkit_rerank.simple import prompt_tensors


@RERANKERS.register_module()
class MatcherReranker(Reranker):
    """Score each candidate with the matching model a ``TrainMatcher`` stage trained (name ``matcher``).

    ERNIE-ViLG reranks its candidates with a separate image–text matching model; this one is a small
    cross-encoder over the prompt's ids and the candidate's codes (:mod:`vilgkit.models.matcher`),
    trained on the run's own pairs with hard negatives. It needs no decoded pixels and no pass of
    the generator: one forward of the matcher over all ``B*N`` (prompt, candidate) pairs.
    :class:`vilgkit.Pipeline` loads the matcher with the run and hands it over in
    ``RerankInputs.matcher``.

    Args:
        batch_size: pairs per matcher pass (bounds memory; results do not depend on it).
    """

    needs_matcher = True
    #: what the matcher's image side must read for this reranker
    reads = "codes"

    def __init__(self, batch_size: int = 256) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = batch_size

    @torch.no_grad()
    def score(self, inputs: RerankInputs) -> torch.Tensor:
        matcher = inputs.matcher
        found = getattr(matcher, "image_input", "codes")
        if found != self.reads:
            raise ValueError(
                f"the run's matcher reads {found}, {type(self).__name__} scores {self.reads}: "
                f"rerank with {MATCHER_RERANKER_FOR[found]!r}"
            )
        ids, mask = prompt_tensors(inputs, type(self).__name__)
        device = next(matcher.parameters()).device
        n = inputs.num_candidates
        ids, mask = ids.repeat_interleave(n, 0).to(device), mask.repeat_interleave(n, 0).to(device)
        images = (inputs.codes if self.reads == "codes" else inputs.images).to(device)
        scores = [
            matcher(ids[i : i + self.batch_size], mask[i : i + self.batch_size], images[i : i + self.batch_size])
            for i in range(0, len(images), self.batch_size)
        ]
        return torch.cat(scores)


@RERANKERS.register_module()
class PixelMatcherReranker(MatcherReranker):
    """Score each *decoded* candidate with a matcher that reads pixels (name ``pixel_matcher``).

    The run's ``TrainMatcher`` stage must have ``image_input: pixels``: the matcher was trained on
    the image tokenizer's reconstructions, the rendering the candidates are decoded into. It costs
    one decode of every candidate (which the caller then reuses for the kept one) and one matcher pass.

    Args:
        batch_size: pairs per matcher pass (bounds memory; results do not depend on it).
    """

    needs_images = True
    reads = "pixels"
