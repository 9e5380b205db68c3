"""Helpers shared by the reconstructors: argument checks and PSNR."""

from __future__ import annotations

import torch


def check_codes_hidden(codes: torch.Tensor, image_hidden: torch.Tensor | None) -> None:
    """Codes must be an integer ``[B, h, w]`` grid; hidden states, when given, ``[B, h*w, C]``."""
    if codes.ndim != 3 or codes.is_floating_point():
        raise ValueError(f"expected integer codes [B, h, w], got {tuple(codes.shape)} {codes.dtype}")
    if image_hidden is None:
        return
    b, h, w = codes.shape
    if image_hidden.ndim != 3 or image_hidden.shape[:2] != (b, h * w):
        raise ValueError(
            f"expected image hidden states [B, h*w, C] = [{b}, {h * w}, C] for codes {tuple(codes.shape)}, "
            f"got {tuple(image_hidden.shape)}"
        )
