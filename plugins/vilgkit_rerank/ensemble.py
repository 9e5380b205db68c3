"""Several rerankers' judgements combined into one (short name: the members joined by ``+``)."""

from __future__ import annotations

from typing import Any

import torch

from vilgkit.interfaces import Reranker, RerankInputs
from vilgkit.registry import RERANKERS


@RERANKERS.register_module()
class EnsembleReranker(Reranker):
    """Score each candidate by the sum of its members' scores, each standardised among the
    candidates of its prompt (``self+pixel_matcher``: the generator's own likelihood and the matcher).

    The members score on different scales (a log-likelihood in nats, a matcher logit), so each
    member's N scores of a prompt are turned into z-scores first (a member whose N scores are all
    equal adds nothing to that prompt) and then weighted: every member counts alike by default.
    The ensemble needs what any member needs (decoded images, the generator, the matcher).

    Args:
        members: the members' names (:mod:`vilgkit.reranker_names`: short or registered class names), at least two.
        weights: one weight per member (default 1 each).
    """

    def __init__(self, members: list[str], weights: list[float] | None = None) -> None:
        from vilgkit.reranker_names import build_named_reranker

        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two members, got {members}")
        weights = [1.0] * len(members) if weights is None else [float(w) for w in weights]
        if len(weights) != len(members):
            raise ValueError(f"{len(members)} members need {len(members)} weights, got {len(weights)}")
        built = [build_named_reranker(name) for name in members]
        if any(r is None for r in built):
            raise ValueError(f"an ensemble member must rerank ('none' keeps the first candidate): {members}")
        self.members, self.weights = list(members), weights
        self._rerankers: list[Reranker] = built
        # what any member needs, the ensemble needs (instance attributes shadow the class defaults)
        self.needs_images = any(r.needs_images for r in built)
        self.needs_generator = any(r.needs_generator for r in built)
        self.needs_matcher = any(r.needs_matcher for r in built)
        reads = {r.reads for r in built if getattr(r, "reads", None) is not None}
        if len(reads) > 1:
            raise ValueError(f"ensemble members {members} need matchers reading {sorted(reads)}; a run has one")
        self.reads = next(iter(reads), None)  # what the run's matcher must read, if a member uses it

    @classmethod
    def conformance_args(cls) -> dict[str, Any]:
        """The smallest ensemble for the registry-wide conformance tests: two generator-based members."""
        return {"members": ["self", "self_mean"]}

    def score(self, inputs: RerankInputs) -> torch.Tensor:
        n = inputs.num_candidates
        total = torch.zeros(inputs.num_prompts, n)
        for weight, reranker in zip(self.weights, self._rerankers):
            total += weight * per_prompt_zscores(reranker.score(inputs).detach().float().cpu().view(-1, n))
        return total.flatten()


def per_prompt_zscores(scores: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` scores → their z-scores among each prompt's N candidates (all equal: zeros)."""
    spread = scores.std(dim=1, unbiased=False, keepdim=True)
    z = (scores - scores.mean(dim=1, keepdim=True)) / spread.clamp_min(1e-12)
    return torch.where(spread > 0, z, torch.zeros_like(z))
