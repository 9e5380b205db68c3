"""VQ-VAE image tokenizer (paper §3.1.1, eq. 1–2).

Dimension key:
    B  batch
    H, W  image size
    h, w  code grid (H / f, W / f)
    d  code dimension
    K  codebook size

``x̂ = G(C(q(E(x))))``; the loss is ``||x - x̂||² + ||sg[z_emb] - E(x)||² · beta + ||sg[E(x)] - z_emb||²``
(the codebook term is replaced by EMA updates when ``ema=True``).
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from vilgkit import dispatch, dispatch_probes
from vilgkit.interfaces import ImageTokenizer, Trainable
from vilgkit.registry import IMAGE_TOKENIZERS
from vilgkit_vq.common import (
    channel_multipliers,
    check_codes,
    check_images,
    check_reconstruction_loss,
    main_group_images,
    reconstruction_loss,
    reconstruction_readouts,
)
from vilgkit_vq.nets import ConvDecoder, ConvEncoder
from vilgkit_vq.quantizers import VectorQuantizer


@IMAGE_TOKENIZERS.register_module()
class VQVAETokenizer(ImageTokenizer, Trainable):
    """VQ-VAE: conv encoder, nearest-codebook quantiser (straight-through), conv decoder.

    Args:
        codebook_size: number of codes ``K``.
        code_dim: code dimension ``d``.
        downsample: factor ``f`` between image and code grid (4, 8, 16...).
        hidden: base channel count of encoder and decoder.
        channel_mult: channel multiplier per level (length ``log2 f``); default doubles once after
            the first level and then stays (``[1, 2, 2, ...]``).
        num_res_blocks: residual blocks per level.
        beta: commitment weight (paper eq. 1 uses 1; VQ-VAE's customary value is 0.25).
        rec_loss: ``"mse"`` (paper eq. 1) or ``"l1"``.
        edge_weight: with ``rec_loss="mse"``, weight each pixel's squared error by
            ``1 + edge_weight * |∇ image|`` (see :func:`edge_weighted_mse`); 0 = plain MSE.
        ema: EMA codebook updates instead of the codebook loss term.
        ema_decay: EMA decay.
        restart_dead_codes: reset rarely used codes to random encoder outputs.
        dead_code_threshold: running assignments per batch under which a code counts as dead.
    """

    def __init__(
        self,
        codebook_size: int = 512,
        code_dim: int = 64,
        downsample: int = 8,
        hidden: int = 64,
        channel_mult: list[int] | None = None,
        num_res_blocks: int = 1,
        beta: float = 0.25,
        rec_loss: Literal["mse", "l1"] = "mse",
        ema: bool = False,
        ema_decay: float = 0.99,
        restart_dead_codes: bool = False,
        dead_code_threshold: float = 0.03,
        edge_weight: float = 0.0,
    ) -> None:
        super().__init__()
        mult = channel_multipliers(downsample, channel_mult)
        check_reconstruction_loss(rec_loss, edge_weight)
        self.codebook_size, self.code_dim, self.downsample = codebook_size, code_dim, downsample
        self.rec_loss, self.edge_weight = rec_loss, edge_weight
        self.encoder = ConvEncoder(code_dim, hidden, mult, num_res_blocks)
        self.decoder = ConvDecoder(code_dim, hidden, mult, num_res_blocks)
        self.quantizer = VectorQuantizer(
            codebook_size,
            code_dim,
            beta=beta,
            ema=ema,
            ema_decay=ema_decay,
            restart_dead_codes=restart_dead_codes,
            dead_code_threshold=dead_code_threshold,
        )

    @classmethod
    def conformance_args(cls) -> dict[str, Any]:
        """Tiny settings for the registry-wide conformance tests."""
        return {"codebook_size": 16, "code_dim": 8, "downsample": 4, "hidden": 8}

    # ----------------------------------------------------------------- ImageTokenizer

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, self.downsample)
        if images.device.type == "cpu" and dispatch.choose("encode_layout") == "channels_last":
            # channels-last convolutions encoded 1.4–2× faster on a 2-core EPYC (the demo's
            # tokenizer, `bench_tokenizers.py --demo-encode`), which vilgkit.dispatch checks per
            # machine; the codes are the contiguous layout's except for floating-point ties
            # (> 99.98 % agree). Training (bf16) stays contiguous: there channels-last was slower.
            images = images.contiguous(memory_format=torch.channels_last)
        return self.quantizer.quantize(self.encoder(images))

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        check_codes(codes, self.codebook_size)
        return self.quantizer.lookup(codes)

    def decode_embedding(self, z_emb: torch.Tensor) -> torch.Tensor:
        return self.decoder(z_emb).clamp(-1.0, 1.0)

    def reconstruct(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Forward pass: ``(x̂ unclamped [B,3,H,W], quantiser losses, codes [B,h,w])``."""
        check_images(images, self.downsample)
        out = self.quantizer(self.encoder(images))
        return self.decoder(out.z_q), out.losses, out.codes

    def loss(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        recon, q_losses, codes = self.reconstruct(images)
        rec = reconstruction_loss(recon, images, self.rec_loss, self.edge_weight)
        total = rec + sum(q_losses.values())
        return {
            "loss": total,
            "rec": rec,
            **q_losses,
            **reconstruction_readouts(images, recon, codes, self.codebook_size),
        }

    def decoder_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.decoder.parameters())

    def decoder_loss(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad(), torch.autocast(device_type=images.device.type, enabled=False):
            codes = self.encode(images.float())  # the generator's codes: fp32 whatever the trainer's autocast
        recon = self.decoder(self.quantizer.lookup(codes))
        rec = reconstruction_loss(recon, images, self.rec_loss, self.edge_weight)
        return {"loss": rec, "rec": rec, **reconstruction_readouts(images, recon, codes, self.codebook_size)}

    # ----------------------------------------------------------------- Trainable

    def forward(self, batch: Any, group: str = "main", step: int = 0) -> dict[str, torch.Tensor]:
        """The training pass for optimizer ``group`` at ``step``: the named losses (outputs and losses
        are one here: the losses run parameters of their own)."""
        return self.loss(main_group_images(self, batch, group))


dispatch.register_probe("encode_layout", dispatch_probes.encode_layout_probe)
