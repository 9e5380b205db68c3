"""The image tokenizer interface: pixels ⇄ a grid of discrete codes."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class ImageTokenizer(nn.Module, ABC):
    """Turns images into a grid of discrete codes and back (paper §3.1.1).

    Images are float tensors ``[B, 3, H, W]`` in ``[-1, 1]``; ``H`` and ``W`` must be divisible by
    ``downsample``. Codes are ``int64`` tensors ``[B, H // downsample, W // downsample]`` in
    ``[0, codebook_size)``.

    Subclasses also implement the training contract of :class:`vilgkit.interfaces.Trainable`
    through :meth:`loss` (and, for adversarial tokenizers, several optimizer groups).
    """

    codebook_size: int
    downsample: int
    code_dim: int

    @abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [-1, 1] → codes ``[B, h, w]`` (int64)."""

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, h, w]`` → images ``[B, 3, H, W]`` in [-1, 1]: by default the decoder on the
        codebook embeddings, ``decode_embedding(embed(codes))``."""
        return self.decode_embedding(self.embed(codes))

    @abstractmethod
    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, h, w]`` → quantised embeddings ``z_emb`` ``[B, code_dim, h, w]`` (codebook lookup)."""

    @abstractmethod
    def decode_embedding(self, z_emb: torch.Tensor) -> torch.Tensor:
        """Embeddings ``[B, code_dim, h, w]`` → images ``[B, 3, H, W]`` (the decoder alone).

        The end-to-end reconstructor feeds the generator's mapped hidden states through this.
        """

    @abstractmethod
    def loss(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training losses on a batch of images; key ``"loss"`` is the total to minimise.

        Other keys are logged (e.g. ``"rec"``, ``"commit"``, ``"perplexity"``).
        """

    def decoder_parameters(self) -> list[nn.Parameter]:
        """The decoder's parameters: what :class:`~vilgkit.stages.finetune_decoder.FinetuneDecoder`
        trains while the encoder and the codebook stay frozen. Tokenizers that cannot train their
        decoder alone keep this default, which raises."""
        raise NotImplementedError(f"{type(self).__name__} cannot train its decoder alone")

    def decoder_loss(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Losses for training the decoder alone: ``images`` are encoded exactly as :meth:`encode`
        does for a generator (frozen, no gradients, full precision) and the decoder learns to
        reconstruct them from those codes. Key ``"loss"`` is the total; see :meth:`decoder_parameters`."""
        raise NotImplementedError(f"{type(self).__name__} cannot train its decoder alone")

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Code grid ``(h, w)`` for an image of ``height × width`` pixels."""
        if height % self.downsample or width % self.downsample:
            raise ValueError(
                f"image size {height}x{width} is not divisible by the downsampling factor {self.downsample}"
            )
        return height // self.downsample, width // self.downsample
