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
    rows = torch.arange(codes.shape[0], device=codes.device)
    return pair_log_likelihoods(generator, codes, text_ids, text_mask, rows, rows // num_candidates, batch_size).view(
        text_ids.shape[0], num_candidates
    )


@torch.no_grad()
def pair_log_likelihoods(
    generator: Generator,
    codes: torch.Tensor,
    text_ids: torch.Tensor,
    text_mask: torch.Tensor | None,
    code_rows: torch.Tensor,
    text_rows: torch.Tensor,
    batch_size: int = 64,
) -> torch.Tensor:
    """``Float[P]``: ``log P(text_ids[text_rows[p]] | codes[code_rows[p]])`` for P (candidate, text) pairs.

    The pairs go through ``text_log_likelihood`` in passes of ``batch_size`` rows (the contrastive
    reranker scores each candidate against several texts this way).

    Args:
        codes: ``Long[R, h, w]`` candidates.
        text_ids, text_mask: ``[T, L]`` texts (BOS … EOS, right-padded; mask ``None``: every id is real).
        code_rows, text_rows: ``Long[P]`` row indices into ``codes`` and ``text_ids``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = codes.device
    mask = torch.ones_like(text_ids, dtype=torch.bool) if text_mask is None else text_mask
    code_rows, text_rows = code_rows.to(device), text_rows.to(device)
    ids, mask = text_ids.to(device), mask.to(device)
    scores = []
    for i in range(0, code_rows.numel(), batch_size):
        c, t = code_rows[i : i + batch_size], text_rows[i : i + batch_size]
        scores.append(generator.text_log_likelihood(codes[c], ids[t], mask[t]))
    if not scores:
        return torch.zeros(0)
    return torch.cat(scores).float()
