"""The reranker interface: pick the best of N sampled images per prompt (paper §4.2, best of 60/10).

Candidates arrive candidate-major, as ``Generator.sample_images(..., num_candidates=N)`` returns
them: rows ``b*N .. b*N+N-1`` belong to prompt ``b``. A reranker scores every candidate (higher is
better) and the best per prompt is kept. Implementations live in plugins (``vilgkit_rerank``:
``SelfReranker``, ``MeanSelfReranker``, ``PMIReranker``, ``CaptionReranker``, ``MatcherReranker``,
``ClipReranker``, ``ConsensusReranker``, ``EnsembleReranker``, ``NoReranker``) and register in
``RERANKERS``; their short names are in :mod:`vilgkit.reranker_names`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch


@dataclass
class RerankInputs:
    """Everything a reranker may look at for ``B`` prompts with ``N`` candidates each.

    Attributes:
        num_candidates: ``N``.
        codes: sampled codes ``[B*N, h, w]`` (candidate-major).
        text_ids: the prompts' ids ``[B, L]`` (BOS … EOS, padded), as the generator read them.
        text_mask: ``[B, L]`` True at real tokens.
        prompts: the prompt strings (``B``), for rerankers with their own text encoder.
        images: decoded candidates ``[B*N, 3, H, W]`` in [-1, 1], when the caller decoded them
            (rerankers whose ``needs_images`` is True require them).
        generator: the generator that sampled the codes (the self-reranker scores with it).
        matcher: the run's image–text matching model, when it has one (``MatcherReranker``).
    """

    num_candidates: int
    codes: torch.Tensor
    text_ids: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    prompts: list[str] | None = None
    images: torch.Tensor | None = None
    generator: Any = None
    matcher: Any = None

    @property
    def num_prompts(self) -> int:
        return self.codes.shape[0] // self.num_candidates


@dataclass
class RerankResult:
    """What :meth:`Reranker.rerank` returns.

    Attributes:
        best: index of the kept candidate per prompt ``[B]`` (in ``0..N-1``).
        scores: every candidate's score ``[B, N]`` (higher is better).
        order: candidates of each prompt sorted best first ``[B, N]``.
        seconds: wall-clock time spent scoring.
    """

    best: torch.Tensor
    scores: torch.Tensor
    order: torch.Tensor
    seconds: float

    def select(self, candidates: torch.Tensor) -> torch.Tensor:
        """Pick the best row per prompt from a candidate-major tensor ``[B*N, ...]`` → ``[B, ...]``."""
        num_prompts, n = self.scores.shape
        rows = torch.arange(num_prompts, device=self.best.device) * n + self.best
        return candidates[rows.to(candidates.device)]


class Reranker(ABC):
    """Scores sampled image candidates against their prompt.

    Class attributes:
        needs_images: True when :meth:`score` needs decoded pixels (``RerankInputs.images``).
        needs_generator: True when :meth:`score` needs ``RerankInputs.generator``.
        needs_matcher: True when :meth:`score` needs ``RerankInputs.matcher``.
    """

    needs_images: ClassVar[bool] = False
    needs_generator: ClassVar[bool] = False
    needs_matcher: ClassVar[bool] = False

    @abstractmethod
    def score(self, inputs: RerankInputs) -> torch.Tensor:
        """A score per candidate ``[B*N]`` (float, higher is better)."""

    def rerank(self, inputs: RerankInputs) -> RerankResult:
        """Score all candidates and rank them per prompt."""
        n = inputs.num_candidates
        if n <= 0 or inputs.codes.shape[0] % n:
            raise ValueError(f"{inputs.codes.shape[0]} candidates cannot be split into groups of {n}")
        if self.needs_images and inputs.images is None:
            raise ValueError(f"{type(self).__name__} needs decoded candidate images (RerankInputs.images)")
        if self.needs_generator and inputs.generator is None:
            raise ValueError(f"{type(self).__name__} needs the generator (RerankInputs.generator)")
        if self.needs_matcher and inputs.matcher is None:
            raise ValueError(
                f"{type(self).__name__} needs the run's image–text matcher: add a TrainMatcher stage to the recipe"
            )
        start = time.perf_counter()
        scores = self.score(inputs).detach().float().reshape(-1, n).cpu()
        seconds = time.perf_counter() - start
        order = torch.argsort(scores, dim=1, descending=True, stable=True)
        return RerankResult(best=order[:, 0], scores=scores, order=order, seconds=seconds)


def rerank_samples(
    reranker: Reranker,
    num_candidates: int,
    codes: torch.Tensor,
    text_ids: torch.Tensor,
    text_mask: torch.Tensor,
    prompts: list[str],
    images: torch.Tensor | None,
    generator: Any,
    matcher: Any = None,
) -> RerankResult:
    """Rerank ``num_candidates`` sampled candidates per prompt, ``text_ids`` and ``text_mask`` moved to
    the codes' device: what the evaluation harness and the server run."""
    return reranker.rerank(
        RerankInputs(
            num_candidates=num_candidates,
            codes=codes,
            text_ids=text_ids.to(codes.device),
            text_mask=text_mask.to(codes.device),
            prompts=prompts,
            images=images,
            generator=generator,
            matcher=matcher,
        )
    )
