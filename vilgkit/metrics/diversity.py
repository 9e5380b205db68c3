"""How different the N sampled candidates of a prompt are (best of N only helps when they differ).

Two numbers per prompt, averaged over prompts (:class:`CandidateDiversity` accumulates them over
the batches of an evaluation; ``eval.json`` reports them under ``candidate_diversity``):

* ``distinct_share``: distinct code sequences among the N candidates, divided by N (1.0: all
  differ; 1/N: all N are the same image);
* ``mean_code_difference``: over every pair of candidates, the fraction of code positions where the
  two differ (0: identical; near ``1 − 1/V`` for independent uniform codes over V entries).

Dimension key: B prompts, N candidates per prompt, T = h·w codes per candidate.
"""

from __future__ import annotations

import torch


def candidate_diversity(codes: torch.Tensor, num_candidates: int) -> dict[str, float]:
    """Diversity of candidate-major codes ``[B*N, h, w]`` (or ``[B*N, T]``), averaged over the B prompts.

    Returns:
        ``{"distinct_share", "mean_code_difference", "num_prompts", "num_candidates"}``; with N = 1
        the share is 1.0 and the difference 0.0 (nothing to compare).
    """
    acc = CandidateDiversity(num_candidates)
    acc.update(codes)
    return acc.compute()


def per_prompt_diversity(codes: torch.Tensor, num_candidates: int) -> dict[str, torch.Tensor]:
    """``distinct_share`` and ``mean_code_difference`` per prompt, ``Float[B]`` each."""
    n = num_candidates
    if n < 1 or codes.shape[0] % n or codes.shape[0] == 0:
        raise ValueError(f"{codes.shape[0]} candidates cannot be split into groups of {n}")
    flat = codes.reshape(codes.shape[0] // n, n, -1).cpu()  # [B, N, T]
    distinct = torch.tensor([float(torch.unique(group, dim=0).shape[0]) for group in flat]) / n
    if n == 1:
        return {"distinct_share": distinct, "mean_code_difference": torch.zeros(flat.shape[0])}
    # one prompt at a time: [N, N, T] stays small even for best of 60 on a 32x32 grid
    differ = torch.stack([(g[:, None, :] != g[None, :, :]).sum((0, 1)).sum() / g.shape[1] for g in flat])
    return {"distinct_share": distinct, "mean_code_difference": differ.float() / (n * (n - 1))}


class CandidateDiversity:
    """Accumulates :func:`per_prompt_diversity` over batches (the evaluation harness's best of N)."""

    def __init__(self, num_candidates: int) -> None:
        self.num_candidates = num_candidates
        self._share: list[torch.Tensor] = []
        self._difference: list[torch.Tensor] = []

    def update(self, codes: torch.Tensor) -> None:
        out = per_prompt_diversity(codes, self.num_candidates)
        self._share.append(out["distinct_share"])
        self._difference.append(out["mean_code_difference"])

    def compute(self) -> dict[str, float]:
        if not self._share:
            raise ValueError("no candidates seen")
        share, difference = torch.cat(self._share), torch.cat(self._difference)
        return {
            "distinct_share": float(share.mean()),
            "mean_code_difference": float(difference.mean()),
            "num_prompts": float(share.numel()),
            "num_candidates": float(self.num_candidates),
        }
