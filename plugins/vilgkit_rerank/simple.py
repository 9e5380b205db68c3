"""Self-reranking (same weights, image→text likelihood of the prompt) and no reranking."""
from __future__ import annotations

import torch

from vilgkit.interfaces import Reranker, RerankInputs
from vilgkit.registry import RERANKERS


@RERANKERS.register_module()
class SelfReranker(Reranker):
    """Score each candidate by ``log P(prompt | candidate codes)`` under the generator that sampled it.

    This is possible only because one ERNIE-ViLG model does both directions: the text→image sampler
    is also an image→text model, so no separate matching model is needed (CogView trains a separate
    captioning checkpoint for the same purpose). All ``B*N`` candidates are scored in batched
    teacher-forced passes of ``batch_size`` rows.

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
        n = inputs.num_candidates
        generator = inputs.generator
        device = inputs.codes.device
        text_ids = inputs.text_ids.to(device)
        text_mask = inputs.text_mask.to(device) if inputs.text_mask is not None else torch.ones_like(text_ids, dtype=torch.bool)
        # Candidate-major: row b*N + j belongs to prompt b, so each prompt is repeated N times in place.
        ids = text_ids.repeat_interleave(n, dim=0)
        mask = text_mask.repeat_interleave(n, dim=0)
        scores = []
        with torch.no_grad():
            for start in range(0, inputs.codes.shape[0], self.batch_size):
                sl = slice(start, start + self.batch_size)
                scores.append(generator.text_log_likelihood(inputs.codes[sl], ids[sl], mask[sl]).float())
        out = torch.cat(scores)
        if self.length_normalize:
            out = out / mask.sum(dim=1).clamp(min=1).to(out)
        return out


@RERANKERS.register_module()
class NoReranker(Reranker):
    """Keep the first candidate of every prompt (equivalent to a random choice among i.i.d. samples)."""

    def score(self, inputs: RerankInputs) -> torch.Tensor:
        n = inputs.num_candidates
        # Strictly decreasing within a group, so a stable sort keeps candidate 0 first.
        return -torch.arange(n, dtype=torch.float32).repeat(inputs.num_prompts)
