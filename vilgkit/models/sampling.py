"""Turning next-token logits into tokens: temperature, top-k, top-p, classifier-free guidance.

Dimension key: R rows, V vocabulary.
"""

from __future__ import annotations

import torch


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None, vocab: int) -> None:
    """Raise ``ValueError`` with a clear message for out-of-range sampling settings."""
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and not 1 <= top_k:
        raise ValueError(f"top_k must be a positive int or None, got {top_k}")
    if top_k is not None and top_k > vocab:
        raise ValueError(f"top_k={top_k} exceeds the vocabulary size {vocab}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def guide(logits: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: rows ``[cond; uncond]`` → ``uncond + scale · (cond − uncond)``."""
    cond, uncond = logits.chunk(2, dim=0)
    return uncond + scale * (cond - uncond)


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set logits outside the top-k / nucleus (top-p) to ``-inf``; the most likely token always stays.

    Args:
        logits: ``[R, V]`` (already divided by the temperature).
        top_k: keep the k largest logits per row.
        top_p: keep the smallest set of most likely tokens whose probability mass reaches ``top_p``.
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # [R, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the mass *before* it already reaches top_p (so the first always stays)
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one token per row from ``[R, V]`` logits; ``temperature == 0`` or ``top_k == 1`` is argmax.

    Returns:
        ``Long[R]``.
    """
    if temperature == 0 or top_k == 1:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        # sample inside the top-k only: a draw over k entries instead of the whole vocabulary
        # (multinomial over 8192 codes costs more than a decoding step's attention at batch 1)
        values, index = logits.topk(top_k, dim=-1)  # sorted, so top-p can work on it directly
        probs = filter_logits(values, None, top_p).softmax(dim=-1)
        choice = torch.multinomial(probs, 1, generator=generator)
        return index.gather(-1, choice).squeeze(-1)
    probs = filter_logits(logits, None, top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
