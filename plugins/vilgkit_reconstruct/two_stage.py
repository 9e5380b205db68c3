"""The two-stage reconstructor (paper §3.1.3, red path of Fig. 1): codes → codebook → decoder.

The generator and the reconstructor are trained separately: the reconstructor *is* the image
tokenizer's codebook lookup (``z_emb = embed(codes)``, ``[B, d, h, w]``) and decoder. It has no
weights of its own, so nothing of it is saved with the generator.

Dimension key: B batch, h/w code grid, d code dimension, H/W image size.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from vilgkit.interfaces import ImageTokenizer, Reconstructor
from vilgkit.metrics.psnr import psnr
from vilgkit.registry import RECONSTRUCTORS
from vilgkit_reconstruct.common import check_codes_hidden


@RECONSTRUCTORS.register_module()
class TwoStageReconstructor(Reconstructor):
    """Decode sampled (or gold) codes with the image tokenizer's own codebook and decoder.

    The tokenizer is handed over after it is trained, with :meth:`attach` (the generator stage and
    :class:`vilgkit.Pipeline` do this); it is kept *outside* the module tree, so the reconstructor's
    state dict is empty and the tokenizer is neither optimised nor checkpointed here.

    Args:
        image_tokenizer: optionally attach a trained tokenizer right away.
    """

    end_to_end = False

    def __init__(self, image_tokenizer: ImageTokenizer | None = None) -> None:
        super().__init__()
        self._tokenizer: list[ImageTokenizer] = []  # a list: not registered as a submodule
        if image_tokenizer is not None:
            self.attach(image_tokenizer)

    @classmethod
    def conformance_args(cls) -> dict[str, Any]:
        return {}

    def attach(self, image_tokenizer: ImageTokenizer, hidden_size: int | None = None) -> TwoStageReconstructor:
        """Use ``image_tokenizer``'s codebook and decoder (``hidden_size`` is accepted and ignored)."""
        if not isinstance(image_tokenizer, ImageTokenizer):
            raise TypeError(f"attach needs an ImageTokenizer, got {type(image_tokenizer).__name__}")
        self._tokenizer = [image_tokenizer]
        return self

    @property
    def is_attached(self) -> bool:
        return bool(self._tokenizer)

    @property
    def image_tokenizer(self) -> ImageTokenizer:
        if not self._tokenizer:
            raise RuntimeError("TwoStageReconstructor has no image tokenizer: call attach(image_tokenizer) first")
        return self._tokenizer[0]

    def reconstruct(self, codes: torch.Tensor, image_hidden: torch.Tensor | None = None) -> torch.Tensor:
        """Codes ``[B, h, w]`` → ``tokenizer.decode(codes)`` ``[B, 3, H, W]`` in [-1, 1] (hidden states are ignored)."""
        check_codes_hidden(codes, None)
        tok = self.image_tokenizer
        return tok.decode(codes.to(next(tok.parameters()).device))

    def loss(
        self, images: torch.Tensor, codes: torch.Tensor, image_hidden: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """MSE of the tokenizer's decode of ``codes`` against ``images`` (a report: nothing here trains)."""
        with torch.no_grad():
            recon = self.reconstruct(codes).float()
            images = images.to(recon.device).float()
            return {"loss": F.mse_loss(recon, images), "psnr": psnr(images, recon)}
