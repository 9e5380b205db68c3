"""Quantisers: nearest-codebook VQ (straight-through, EMA, dead-code restarts) and Gumbel-softmax.

Dimension key:
    B  batch
    h, w  code grid
    d  code (embedding) dimension
    K  codebook size
    N  number of vectors (B·h·w)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


@dataclass
class QuantizerOutput:
    """What a quantiser returns in training.

    Attributes:
        z_q: quantised features ``[B, d, h, w]`` (gradients flow to the encoder).
        codes: ``[B, h, w]`` int64.
        losses: named loss terms (already weighted) that the tokenizer adds to its total.
    """

    z_q: torch.Tensor
    codes: torch.Tensor
    losses: dict[str, torch.Tensor]


def codebook_usage(codes: torch.Tensor, codebook_size: int) -> dict[str, torch.Tensor]:
    """Perplexity ``exp(H(p))`` of the code histogram and the share of codes used at least once.

    A perplexity near ``codebook_size`` means every code is used equally; near 1 means collapse.
    """
    counts = torch.bincount(codes.reshape(-1), minlength=codebook_size).float()
    probs = counts / counts.sum().clamp_min(1.0)
    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum()
    return {"perplexity": entropy.exp(), "usage": (counts > 0).float().mean()}


def full_precision(x: torch.Tensor):
    """Context that switches autocast off on ``x``'s device (code assignment needs fp32 distances)."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def nearest_code(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row (squared L2) for each row of ``z`` ``[N, d]`` → ``[N]``."""
    # ||z - e||² = ||z||² - 2 z·e + ||e||²; ||z||² is constant per row so it does not change argmin.
    dist = codebook.pow(2).sum(1)[None, :] - 2.0 * z @ codebook.t()
    return dist.argmin(dim=1)


class VectorQuantizer(nn.Module):
    """Nearest-codebook quantisation with straight-through gradients (VQ-VAE; paper eq. 1).

    Loss terms: ``codebook = ||sg[E(x)] - z_emb||²`` (moves codes; absent with EMA updates) and
    ``commit = beta · ||sg[z_emb] - E(x)||²`` (keeps the encoder near its codes). Both are means
    over elements. The paper's eq. 1 weights both terms by 1 (``beta = 1``).

    Args:
        codebook_size: ``K``.
        code_dim: ``d``.
        beta: commitment weight.
        ema: update the codebook by exponential moving averages of assigned vectors (van den Oord
            et al. 2017, appendix) instead of by gradient.
        ema_decay: EMA decay.
        restart_dead_codes: re-initialise codes whose running usage falls below
            ``dead_code_threshold`` (mean assignments per batch) to encoder outputs of the current
            batch, drawn with probability proportional to their quantisation error. Usage
            statistics are per process.
        dead_code_threshold: see above.
        usage_decay: decay of the running usage counts used for restarts.
    """

    def __init__(
        self,
        codebook_size: int,
        code_dim: int,
        beta: float = 0.25,
        ema: bool = False,
        ema_decay: float = 0.99,
        restart_dead_codes: bool = False,
        dead_code_threshold: float = 0.03,
        usage_decay: float = 0.99,
    ) -> None:
        super().__init__()
        if codebook_size < 2 or code_dim < 1:
            raise ValueError(f"need codebook_size ≥ 2 and code_dim ≥ 1, got {codebook_size}, {code_dim}")
        if not 0.0 < ema_decay < 1.0 or not 0.0 < usage_decay < 1.0:
            raise ValueError("ema_decay and usage_decay must lie in (0, 1)")
        self.codebook_size, self.code_dim, self.beta = codebook_size, code_dim, beta
        self.ema, self.ema_decay = ema, ema_decay
        self.restart_dead_codes, self.dead_code_threshold, self.usage_decay = (
            restart_dead_codes,
            dead_code_threshold,
            usage_decay,
        )
        self.embedding = nn.Embedding(codebook_size, code_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        if ema:
            self.embedding.weight.requires_grad_(False)
            self.register_buffer("ema_count", torch.ones(codebook_size))
            self.register_buffer("ema_sum", self.embedding.weight.detach().clone())
        # running mean of assignments per code per batch, for dead-code detection
        self.register_buffer("usage_count", torch.zeros(codebook_size))
        self.register_buffer("usage_steps", torch.zeros(1, dtype=torch.long))

    @property
    def codebook(self) -> torch.Tensor:
        """The codebook ``[K, d]``."""
        return self.embedding.weight

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, h, w]`` → embeddings ``[B, d, h, w]``."""
        return rearrange(self.embedding(codes), "b h w d -> b d h w")

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Features ``[B, d, h, w]`` → codes ``[B, h, w]`` (no gradients, no statistics)."""
        b, _, h, w = z.shape
        flat = rearrange(z, "b d h w -> (b h w) d")
        with full_precision(z):
            return nearest_code(flat.float(), self.codebook.float()).view(b, h, w)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantise encoder features ``[B, d, h, w]`` with straight-through gradients."""
        if z.shape[1] != self.code_dim:
            raise ValueError(f"expected {self.code_dim} feature channels, got {z.shape[1]}")
        z = z.float()
        codes = self.quantize(z.detach())
        z_emb = self.lookup(codes)
        losses = {"commit": self.beta * F.mse_loss(z, z_emb.detach())}
        if not self.ema:
            losses["codebook"] = F.mse_loss(z_emb, z.detach())
        if self.training:
            with torch.no_grad():
                self._update_statistics(z.detach(), codes)
        # straight-through: forward value z_emb, gradient of the identity into z
        z_q = z + (z_emb - z).detach()
        return QuantizerOutput(z_q=z_q, codes=codes, losses=losses)

    def _update_statistics(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        flat = rearrange(z, "b d h w -> (b h w) d").float()
        onehot = F.one_hot(codes.reshape(-1), self.codebook_size).float()  # [N, K]
        if self.ema:
            self.ema_count.mul_(self.ema_decay).add_(onehot.sum(0), alpha=1 - self.ema_decay)
            self.ema_sum.mul_(self.ema_decay).add_(onehot.t() @ flat, alpha=1 - self.ema_decay)
            # Laplace smoothing keeps never-used codes from dividing by zero
            n = self.ema_count.sum()
            smoothed = (self.ema_count + 1e-5) / (n + self.codebook_size * 1e-5) * n
            self.embedding.weight.data.copy_(self.ema_sum / smoothed[:, None])
        dead = update_usage_and_restart(
            self.embedding.weight.data,
            self.usage_count,
            self.usage_steps,
            flat,
            codes.reshape(-1),
            self.dead_code_threshold if self.restart_dead_codes else 0.0,
            self.usage_decay,
        )
        if self.ema and dead.numel():
            self.ema_sum[dead] = self.embedding.weight.data[dead].float()
            self.ema_count[dead] = 1.0


@torch.no_grad()
def update_usage_and_restart(
    codebook: torch.Tensor,
    usage_count: torch.Tensor,
    usage_steps: torch.Tensor,
    flat: torch.Tensor,
    codes: torch.Tensor,
    threshold: float,
    decay: float,
) -> torch.Tensor:
    """Track per-code usage and re-seed dead codes in place; returns the restarted indices.

    Args:
        codebook: ``[K, d]`` weights (modified in place).
        usage_count: ``[K]`` running mean of assignments per batch (updated in place).
        usage_steps: scalar step counter of the running mean (updated in place).
        flat: this batch's encoder outputs ``[N, d]``; codes: their assignments ``[N]``.
        threshold: a code whose bias-corrected usage is below this is dead (0 disables restarts).
        decay: decay of the running mean.
    """
    counts = torch.bincount(codes, minlength=codebook.shape[0]).float()
    usage_count.mul_(decay).add_(counts, alpha=1 - decay)
    usage_steps.add_(1)
    if threshold <= 0:
        return codes.new_empty(0)
    # bias-corrected running mean (as Adam's moments), so the test is fair from the first step
    correction = 1 - decay ** usage_steps.float()
    dead = (usage_count / correction < threshold).nonzero().flatten()
    if dead.numel():
        # k-means++-style: re-seed at vectors the codebook represents worst, so rare content (not
        # the dominant background) gets codes
        err = (flat - codebook[codes].float()).pow(2).sum(1)
        pick = torch.multinomial(err + 1e-12, dead.numel(), replacement=True)
        codebook[dead] = flat[pick].to(codebook.dtype)
        # a grace period: a fresh code must get a few assignments before it counts as dead again
        usage_count[dead] = 4 * threshold * correction
    return dead


def gumbel_temperature(step: int, start: float, end: float, anneal_steps: int) -> float:
    """Exponential annealing from ``start`` to ``end`` over ``anneal_steps`` steps, then constant.

    ``tau(step) = start · (end / start) ** min(step / anneal_steps, 1)`` — DALL-E anneals its
    relaxation temperature geometrically (1 → 1/16).
    """
    if anneal_steps <= 0:
        return end
    frac = min(max(step, 0) / anneal_steps, 1.0)
    return start * (end / start) ** frac


def gumbel_softmax(
    logits: torch.Tensor, tau: float, hard: bool = False, dim: int = -1, noise_scale: float = 1.0
) -> torch.Tensor:
    """Gumbel-softmax sample ``softmax((logits + s·g) / tau)``, ``g ~ Gumbel(0, 1)``, ``s = noise_scale``;
    one-hot forward with the soft sample's gradient when ``hard`` (straight-through).

    With ``s = 1`` the same distribution as ``torch.nn.functional.gumbel_softmax``; ``s = 0`` is the
    deterministic relaxation (hard: the argmax code, as at inference). The noise is drawn as
    ``-log(-log U)`` from uniforms, which on CPU took 1.5–2× less time than the exponential sampler
    torch uses (for the dVAE, K logits per code position, the noise is the largest element-wise cost
    of the quantiser); with ``s = 0`` none is drawn.
    """
    if noise_scale < 0:
        raise ValueError(f"noise_scale must be >= 0, got {noise_scale}")
    x = logits.float()
    if noise_scale > 0:
        u = torch.rand_like(x).clamp_min_(torch.finfo(torch.float32).tiny)
        noise = u.log_().neg_().log_().neg_()
        x = x + (noise if noise_scale == 1.0 else noise.mul_(noise_scale))
    y = (x / tau).softmax(dim)
    if not hard:
        return y
    one_hot = torch.zeros_like(y).scatter_(dim, y.argmax(dim, keepdim=True), 1.0)
    return one_hot - y.detach() + y


def batch_usage_deficit(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``1 − H(q̄) / log K``: how far the batch's average code distribution is from uniform.

    ``q̄`` is ``softmax(logits)`` averaged over every position of the batch. 0 when the batch spreads
    its probability over all ``K`` codes evenly, 1 when it puts it all on one code. Unlike
    :func:`kl_to_uniform`, which flattens each position's own distribution, this rewards the batch
    for *using* many codes while each position stays confident (the codebook diversity penalty of
    wav2vec 2.0, normalised to [0, 1]).
    """
    k = logits.shape[dim]
    avg = F.softmax(logits.float(), dim=dim).movedim(dim, -1).reshape(-1, k).mean(0)
    entropy = -(avg * torch.log(avg.clamp_min(1e-12))).sum()
    return 1.0 - entropy / math.log(k)


def kl_to_uniform(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Mean over positions of ``KL(q || uniform) = Σ_k q_k log(q_k · K)`` with ``q = softmax(logits)``."""
    log_q = F.log_softmax(logits.float(), dim=dim)
    k = logits.shape[dim]
    return (log_q.exp() * (log_q + math.log(k))).sum(dim).mean()
