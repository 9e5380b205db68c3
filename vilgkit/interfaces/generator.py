"""The generator interface: one transformer, both directions (paper §3.1.2)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class GeneratorOutput:
    """What a teacher-forced pass returns.

    Attributes:
        losses: named scalar losses; ``"loss"`` is the total (``L_txt2img + L_img2txt``, eq. 3–5),
            ``"txt2img"`` / ``"img2txt"`` / ``"vqa"`` the per-direction terms present in the batch.
        image_hidden: last-layer hidden states at the image-target positions, ``[B, h*w, hidden]``
            (raster order), when the batch had a text→image part. The end-to-end reconstructor
            consumes them.
        logits: optional per-direction logits, for tests and rerankers.
        labels: optional per-direction target ids of those logits (``-100`` where nothing is
            predicted), for accuracies.
    """

    losses: dict[str, torch.Tensor]
    image_hidden: torch.Tensor | None = None
    logits: dict[str, torch.Tensor] = field(default_factory=dict)
    labels: dict[str, torch.Tensor] = field(default_factory=dict)


class Generator(nn.Module, ABC):
    """A unified transformer whose encoder and decoder share parameters.

    Batches are dicts of tensors (see the generator's own docstring for the keys it reads, e.g.
    ``text_ids [B, L]``, ``codes [B, h, w]``). Incremental decoding with a KV cache is provided for
    both directions; it must give the same logits as the teacher-forced pass.
    """

    text_vocab_size: int
    image_vocab_size: int
    hidden_size: int
    num_layers: int

    @abstractmethod
    def forward(self, batch: dict[str, torch.Tensor]) -> GeneratorOutput:
        """Teacher-forced pass over every direction present in ``batch``."""

    @abstractmethod
    def sample_images(
        self, text_ids: torch.Tensor, text_mask: torch.Tensor | None, grid: tuple[int, int], **sampling
    ) -> torch.Tensor:
        """Text ids ``[B, L]`` (``text_mask`` ``Bool[B, L]`` True at real ids; ``None``: ids != pad) →
        sampled codes ``[B·Nc, h, w]`` (autoregressive, KV-cached; ``num_candidates`` Nc per prompt)."""

    @abstractmethod
    def generate_text(self, codes: torch.Tensor, max_length: int, **decoding) -> list[list[int]]:
        """Codes ``[B, h, w]`` (and optionally a question) → generated id lists."""

    @abstractmethod
    def text_log_likelihood(
        self, codes: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``log P(text | image codes)`` per sample, ``[B]`` (used by self-reranking)."""

    def blocks(self) -> list[nn.Module]:
        """The repeated transformer blocks (strategies shard and checkpoint per block)."""
        return []
