"""Discrete VAE tokenizer as in DALL-E (the paper's lite / end-to-end ablation, §5).

Dimension key:
    B  batch
    H, W  image size
    h, w  code grid (H / f, W / f)
    K  codebook size
    d  code dimension

The encoder predicts logits ``[B, K, h, w]``. In training, a Gumbel-softmax sample ``y`` (soft, or
straight-through hard) mixes the codebook: ``z = Σ_k y_k e_k``; the temperature is annealed by
training step. The ELBO's KL term is taken to the uniform prior over ``K`` codes. At inference
the codes are the argmax of the logits (deterministic, hard).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from einops import rearrange
from torch import nn

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
from vilgkit_vq.quantizers import batch_usage_deficit, gumbel_softmax, gumbel_temperature, kl_to_uniform


def _contiguous_for_training(z: torch.Tensor) -> torch.Tensor:
    """The relaxed code embeddings ``[B, d, h, w]`` as a contiguous tensor.

    Why: rearranged from code-last rows, the view has channels-last strides, which oneDNN's
    convolutions keep through the whole decoder; on the CPU GroupNorm's backward is ≈ 30× slower
    on that layout (measured: a dVAE training step took 369 ms against 260 ms contiguous, batch 32,
    2 cores). Inference (``embed``) keeps the view: forward-only, channels-last decodes faster.
    """
    return z.contiguous()


@IMAGE_TOKENIZERS.register_module()
class DVAETokenizer(ImageTokenizer, Trainable):
    """DALL-E style discrete VAE with an annealed Gumbel-softmax relaxation.

    Args:
        codebook_size: ``K`` (DALL-E: 8192).
        code_dim: dimension ``d`` of a code's embedding (DALL-E's decoder starts with a 1×1 conv
            on the one-hot, which is the same as a codebook lookup).
        downsample: ``f`` (4, 8, 16...).
        hidden: base channel count.
        channel_mult: channel multiplier per level (length ``log2 f``).
        num_res_blocks: residual blocks per level.
        temperature_start: Gumbel temperature at step 0 (DALL-E: 1).
        temperature_end: temperature after annealing (DALL-E: 1/16).
        anneal_steps: steps of geometric annealing from start to end.
        kl_weight: weight of ``KL(q || uniform)`` after warm-up (DALL-E: 6.6 with a sum-reduced
            reconstruction term; with this class's mean-reduced terms a small value is apt).
        kl_warmup_steps: linear warm-up of the KL weight from 0 (DALL-E warms it up too).
        straight_through: hard one-hot forward with soft gradients in training.
        straight_through_start: with ``straight_through``, the step from which samples are hard
            (the soft relaxation before it, so early training explores mixtures of codes and the
            late phase trains the decoder on the single codes that inference decodes); 0: from the start.
        rec_loss: ``"mse"`` or ``"l1"``.
        usage_weight: weight of the batch-usage term :func:`~vilgkit_vq.quantizers.batch_usage_deficit`
            (``1 − H(q̄)/log K`` of the batch-averaged code distribution); 0 = DALL-E's objective.
            Not DALL-E's method: the per-position KL alone lets the relaxation settle on a few
            percent of the codes (measured on Shapes, docs/history/performance-2026-11.md).
        edge_weight: with ``rec_loss="mse"``, weight each pixel's squared error by
            ``1 + edge_weight * |∇ image|`` (:func:`vilgkit_vq.common.edge_weighted_mse`); 0 = plain MSE.
        noise_end, noise_anneal_start, noise_anneal_steps: scale of the Gumbel noise, 1 until
            ``noise_anneal_start``, then linear to ``noise_end`` over ``noise_anneal_steps``. With
            ``noise_end = 0`` and ``straight_through`` the last phase trains the decoder on the argmax
            codes that inference decodes (the sampled codes otherwise differ from them wherever the
            logits are not peaked: the temperature scales the soft sample, not the noise). Not
            DALL-E's method; default 1 = no annealing.
    """

    def __init__(
        self,
        codebook_size: int = 512,
        code_dim: int = 64,
        downsample: int = 8,
        hidden: int = 64,
        channel_mult: list[int] | None = None,
        num_res_blocks: int = 1,
        temperature_start: float = 1.0,
        temperature_end: float = 1.0 / 16,
        anneal_steps: int = 1000,
        kl_weight: float = 1e-3,
        kl_warmup_steps: int = 0,
        straight_through: bool = False,
        straight_through_start: int = 0,
        rec_loss: Literal["mse", "l1"] = "mse",
        edge_weight: float = 0.0,
        usage_weight: float = 0.0,
        noise_end: float = 1.0,
        noise_anneal_start: int = 0,
        noise_anneal_steps: int = 0,
    ) -> None:
        super().__init__()
        mult = channel_multipliers(downsample, channel_mult)
        if not temperature_start > 0 or not temperature_end > 0:
            raise ValueError("Gumbel temperatures must be positive")
        check_reconstruction_loss(rec_loss, edge_weight)
        if usage_weight < 0:
            raise ValueError(f"usage_weight must be >= 0, got {usage_weight}")
        if not 0 <= noise_end <= 1 or noise_anneal_start < 0 or noise_anneal_steps < 0:
            raise ValueError(
                "noise_end must be in [0, 1]; noise_anneal_start and noise_anneal_steps must be >= 0, got "
                f"{noise_end}, {noise_anneal_start}, {noise_anneal_steps}"
            )
        self.noise_end, self.noise_anneal_start, self.noise_anneal_steps = (
            noise_end,
            noise_anneal_start,
            noise_anneal_steps,
        )
        self.edge_weight, self.usage_weight = edge_weight, usage_weight
        self.codebook_size, self.code_dim, self.downsample = codebook_size, code_dim, downsample
        self.temperature_start, self.temperature_end, self.anneal_steps = (
            temperature_start,
            temperature_end,
            anneal_steps,
        )
        self.kl_weight, self.kl_warmup_steps = kl_weight, kl_warmup_steps
        if straight_through_start < 0:
            raise ValueError(f"straight_through_start must be ≥ 0, got {straight_through_start}")
        self.straight_through, self.straight_through_start, self.rec_loss = (
            straight_through,
            straight_through_start,
            rec_loss,
        )
        self.encoder = ConvEncoder(codebook_size, hidden, mult, num_res_blocks)
        self.codebook = nn.Embedding(codebook_size, code_dim)
        self.decoder = ConvDecoder(code_dim, hidden, mult, num_res_blocks)
        # the training step the schedules read; saved with the weights so a resumed run continues
        self.register_buffer("step", torch.zeros(1, dtype=torch.long))  # 1-element, not 0-d: byte views/hashes work

    @classmethod
    def conformance_args(cls) -> dict[str, Any]:
        """Tiny settings for the registry-wide conformance tests."""
        return {"codebook_size": 16, "code_dim": 8, "downsample": 4, "hidden": 8}

    # ----------------------------------------------------------------- schedules

    def temperature(self, step: int | None = None) -> float:
        """Gumbel temperature at ``step`` (default: the current training step)."""
        step = int(self.step) if step is None else step
        return gumbel_temperature(step, self.temperature_start, self.temperature_end, self.anneal_steps)

    def noise_scale(self, step: int | None = None) -> float:
        """Scale of the Gumbel noise at ``step``: 1 until ``noise_anneal_start``, then linear to
        ``noise_end`` over ``noise_anneal_steps`` (0 steps: ``noise_end`` from the start step on)."""
        step = int(self.step) if step is None else step
        if step < self.noise_anneal_start:
            return 1.0
        frac = (
            1.0
            if self.noise_anneal_steps <= 0
            else min((step - self.noise_anneal_start) / self.noise_anneal_steps, 1.0)
        )
        return 1.0 + (self.noise_end - 1.0) * frac

    def kl_weight_at(self, step: int | None = None) -> float:
        """KL weight at ``step`` (linear warm-up, then constant)."""
        step = int(self.step) if step is None else step
        if self.kl_warmup_steps <= 0:
            return self.kl_weight
        return self.kl_weight * min(step / self.kl_warmup_steps, 1.0)

    # ----------------------------------------------------------------- ImageTokenizer

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Encoder logits over codes ``[B, K, h, w]``."""
        check_images(images, self.downsample)
        return self.encoder(images)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images).argmax(dim=1)  # hard codes at inference

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        check_codes(codes, self.codebook_size)
        return rearrange(self.codebook(codes), "b h w d -> b d h w")

    def decode_embedding(self, z_emb: torch.Tensor) -> torch.Tensor:
        return self.decoder(z_emb).clamp(-1.0, 1.0)

    def hard_samples(self, step: int | None = None) -> bool:
        """Whether training samples are straight-through hard one-hots at ``step`` (default: the current step)."""
        step = int(self.step) if step is None else step
        return self.straight_through and step >= self.straight_through_start

    def relaxed_embedding(self, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """Gumbel-softmax sample over codes, mixed into the codebook: ``[B, K, h, w]`` → ``[B, d, h, w]``."""
        h, w = logits.shape[-2:]
        return self._mix(rearrange(logits, "b k h w -> (b h w) k").float(), temperature, h, w)

    def _mix(self, flat_logits: torch.Tensor, temperature: float, h: int, w: int) -> torch.Tensor:
        """Code-last logits ``[N, K]`` (``N = B·h·w``) → relaxed embeddings ``[B, d, h, w]``, contiguous."""
        # code-last [N, K]: softmax, sampling and the codebook product run along contiguous rows
        y = gumbel_softmax(flat_logits, temperature, hard=self.hard_samples(), dim=-1, noise_scale=self.noise_scale())
        z = (y @ self.codebook.weight.float()).to(self.codebook.weight.dtype)
        return _contiguous_for_training(rearrange(z, "(b h w) d -> b d h w", h=h, w=w))

    def loss(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.logits(images)
        h, w = logits.shape[-2:]
        flat = rearrange(logits, "b k h w -> (b h w) k").float()  # [N, K], one copy
        codes = flat.argmax(dim=-1)
        tau = self.temperature()
        if self.training:
            z = self._mix(flat, tau, h, w)
        else:  # evaluation scores what inference does: hard argmax codes
            z = self.embed(codes.view(-1, h, w))
        recon = self.decoder(z)
        rec = reconstruction_loss(recon, images, self.rec_loss, self.edge_weight)
        kl = kl_to_uniform(flat, dim=-1)
        total = rec + self.kl_weight_at() * kl
        out = {"rec": rec, "kl": kl}
        if self.usage_weight > 0:
            deficit = batch_usage_deficit(flat, dim=-1)
            total = total + self.usage_weight * deficit
            out["usage_deficit"] = deficit.detach()
        out["loss"] = total
        with torch.no_grad():
            out["temperature"] = torch.tensor(tau, device=images.device)
            out["noise_scale"] = torch.tensor(self.noise_scale(), device=images.device)
        out.update(reconstruction_readouts(images, recon, codes, self.codebook_size))
        return out

    # ----------------------------------------------------------------- Trainable

    def forward(self, batch: Any, group: str = "main", step: int = 0) -> dict[str, torch.Tensor]:
        """The training pass for optimizer ``group`` at ``step``: the named losses (outputs and losses
        are one here: the losses run parameters of their own)."""
        images = main_group_images(self, batch, group)
        self.step.fill_(step)
        return self.loss(images)
