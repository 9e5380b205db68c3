"""Self-reranking (same weights, image→text likelihood of the prompt) and no reranking."""

from __future__ import annotations

import torch

from vilgkit.interfaces import Reranker, RerankInputs
from vilgkit.registry import RERANKERS
from vilgkit.self_rerank import self_rerank_scores


@RERANKERS.register_module()
class SelfReranker(Reranker):
    """Score each candidate by ``log P(prompt | candidate codes)`` under the generator that sampled it.

    This is possible only because one ERNIE-ViLG model does both directions: the text→image sampler
    is also an image→text model, so no separate matching model is needed (CogView trains a separate
    captioning checkpoint for the same purpose). All ``B*N`` candidates are scored in batched
    teacher-forced passes of ``batch_size`` rows (:func:`vilgkit.self_rerank.self_rerank_scores`, the
    Pipeline's ``reranker="self"`` path too).

    Args:
        batch_size: candidates per likelihood pass (bounds memory; results do not depend on it).
        length_normalize: divide by the number of real prompt tokens. Candidates of one prompt share
            its length, so this changes scores but never the choice; it makes scores comparable
            across prompts.
    """

    needs_generator = True

    def __init__(self, batch_size: int = 64, length_normalize: bool = False) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = batch_size
        self.length_normalize = length_normalize

    def score(self, inputs: RerankInputs) -> torch.Tensor:
        if inputs.text_ids is None:
            raise ValueError("SelfReranker needs the prompts' text_ids")
        device = inputs.codes.device
        text_ids = inputs.text_ids.to(device)
        text_mask = (
            inputs.text_mask.to(device) if inputs.text_mask is not None else torch.ones_like(text_ids, dtype=torch.bool)
        )
        out = self_rerank_scores(
            inputs.generator, inputs.codes, text_ids, text_mask, inputs.num_candidates, self.batch_size
        ).flatten()
        if self.length_normalize:
            out = out / text_mask.sum(dim=1).repeat_interleave(inputs.num_candidates).clamp(min=1).to(out)
        return out


@RERANKERS.register_module()
class NoReranker(Reranker):
    """Keep the first candidate of every prompt (equivalent to a random choice among i.i.d. samples)."""

    def score(self, inputs: RerankInputs) -> torch.Tensor:
        n = inputs.num_candidates
        # Strictly decreasing within a group, so a stable sort keeps candidate 0 first.
        return -torch.arange(n, dtype=torch.float32).repeat(inputs.num_prompts)
