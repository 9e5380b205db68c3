"""Self-reranking scores: ``log P(prompt | candidate codes)`` under the generator that sampled them.

One function serves the Pipeline's ``reranker="self"`` fast path and the ``SelfReranker`` plugin, so
both batch the same way: all ``B·N`` candidates (candidate-major: row ``b·N + j`` is prompt b's
j-th) in teacher-forced image→text passes of ``batch_size`` rows, each prompt repeated in place.
Scores do not depend on ``batch_size`` or on the prompts' padding
(``tests/metrics/test_rerank.py`` checks them against one candidate at a time, unpadded).

Dimension key: B prompts, N candidates per prompt, L text length, h x w code grid.
"""

from __future__ import annotations

import torch

from vilgkit.interfaces.generator import Generator


@torch.no_grad()
def self_rerank_scores(
    generator: Generator,
    codes: torch.Tensor,
    text_ids: torch.Tensor,
    text_mask: torch.Tensor | None,
    num_candidates: int,
    batch_size: int = 64,
) -> torch.Tensor:
    """``Float[B, N]`` log-likelihood of each prompt given each of its candidates' codes.

    Args:
        generator: scores with ``text_log_likelihood(codes, ids, mask)``.
        codes: ``Long[B·N, h, w]`` candidate-major.
        text_ids, text_mask: the prompts ``[B, L]`` (mask ``None``: every id is real).
        num_candidates: N.
        batch_size: candidates per pass (bounds memory; the scores do not depend on it).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if codes.shape[0] != text_ids.shape[0] * num_candidates:
        raise ValueError(f"{codes.shape[0]} candidates for {text_ids.shape[0]} prompts x {num_candidates}")
    device = codes.device
    mask = torch.ones_like(text_ids, dtype=torch.bool) if text_mask is None else text_mask
    ids = text_ids.to(device).repeat_interleave(num_candidates, dim=0)
    mask = mask.to(device).repeat_interleave(num_candidates, dim=0)
    scores = [
        generator.text_log_likelihood(codes[i : i + batch_size], ids[i : i + batch_size], mask[i : i + batch_size])
        for i in range(0, codes.shape[0], batch_size)
    ]
    return torch.cat(scores).float().view(text_ids.shape[0], num_candidates)
