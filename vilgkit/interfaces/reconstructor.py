"""The reconstructor interface: codes or generator hidden states → pixels (paper §3.1.3)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class Reconstructor(nn.Module, ABC):
    """Turns the generator's image output into pixels.

    Two-stage reconstructors decode sampled codes with the tokenizer's codebook and decoder;
    end-to-end reconstructors decode the generator's last-layer hidden states and train jointly.
    """

    #: True when the reconstructor consumes hidden states and trains with the generator.
    end_to_end: bool = False

    def attach(self, image_tokenizer: nn.Module, hidden_size: int) -> None:
        """Receive the trained image tokenizer and the generator's width before use.

        Stages and the pipeline call this once the tokenizer exists (it is usually trained by an
        earlier stage, so it cannot be a constructor argument). The default does nothing.
        """

    @abstractmethod
    def reconstruct(self, codes: torch.Tensor, image_hidden: torch.Tensor | None = None) -> torch.Tensor:
        """Codes ``[B, h, w]`` (and hidden states ``[B, h*w, hidden]`` when end-to-end) → images
        ``[B, 3, H, W]`` in [-1, 1]."""

    @abstractmethod
    def loss(
        self, images: torch.Tensor, codes: torch.Tensor, image_hidden: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Reconstruction loss against the real ``images``; key ``"loss"`` is the total."""
