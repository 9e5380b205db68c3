"""Consensus reranking (minimum Bayes risk): keep the candidate that looks most like its prompt's other candidates.

Dimension key: B prompts, N candidates per prompt, D pixel values of a pooled image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vilgkit.interfaces import Reranker, RerankInputs
from vilgkit.registry import RERANKERS


@RERANKERS.register_module()
class ConsensusReranker(Reranker):
    """Score each candidate by minus its mean distance to the other candidates of the same prompt.

    The N candidates are samples of what the model believes the prompt shows; the one with the
    least expected distance to the others is its consensus rendering (minimum-Bayes-risk choice).
    What makes a candidate wrong on the demo is mostly a blemish of its own, a stray blob or one
    shape drawn badly (docs/performance.md, "Why candidates fail"), which the other candidates do
    not repeat, so it pulls that candidate away from the consensus. The model cannot see those
    blemishes through its own image→text likelihood, so this judges from the decoded pixels instead
    and complements :class:`SelfReranker` (the shipped ``self_bf16+consensus``).

    The distance is the mean absolute difference of the decoded images after average pooling over
    ``pool`` × ``pool`` windows (a one-pixel shift of an edge then costs little). It needs no model
    pass: its cost is the ``B·N²`` distances between the decoded candidates. With a single candidate
    every score is 0.

    Args:
        pool: side of the average-pooling window, in pixels (1: the raw pixels).
    """

    needs_images = True

    def __init__(self, pool: int = 4) -> None:
        if int(pool) != pool or pool < 1:
            raise ValueError(f"pool must be a positive integer, got {pool!r}")
        self.pool = int(pool)

    def score(self, inputs: RerankInputs) -> torch.Tensor:
        n = inputs.num_candidates
        images = inputs.images.float()
        if self.pool > 1:
            images = F.avg_pool2d(images, self.pool, ceil_mode=True)
        pixels = images.reshape(inputs.num_prompts, n, -1)  # [B, N, D]
        if n == 1:
            return torch.zeros(inputs.num_prompts)
        distances = torch.cdist(pixels, pixels, p=1) / pixels.shape[-1]  # [B, N, N], 0 on the diagonal
        return (-distances.sum(dim=-1) / (n - 1)).flatten()
