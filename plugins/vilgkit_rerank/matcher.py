"""Reranking with the run's own image–text matching model (the paper's approach, §4.2)."""

from __future__ import annotations

import torch

from vilgkit.interfaces import Reranker, RerankInputs
from vilgkit.registry import RERANKERS
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

    def __init__(self, batch_size: int = 256) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = batch_size

    @torch.no_grad()
    def score(self, inputs: RerankInputs) -> torch.Tensor:
        matcher = inputs.matcher
        ids, mask = prompt_tensors(inputs, type(self).__name__)
        device = next(matcher.parameters()).device
        n = inputs.num_candidates
        ids, mask = ids.repeat_interleave(n, 0).to(device), mask.repeat_interleave(n, 0).to(device)
        codes = inputs.codes.to(device)
        scores = [
            matcher(ids[i : i + self.batch_size], mask[i : i + self.batch_size], codes[i : i + self.batch_size])
            for i in range(0, len(codes), self.batch_size)
        ]
        return torch.cat(scores)
