"""VQGAN image tokenizer on taming-transformers' modules (the paper's tokenizer, §4.1).

Dimension key:
    B  batch
    H, W  image size
    h, w  code grid (H / f, W / f), f = 2 ** (len(ch_mult) - 1)
    z  encoder output channels (z_channels)
    d  code dimension (embed_dim)
    K  codebook size

Networks: taming's ``Encoder``/``Decoder``, ``VectorQuantizer2`` or ``GumbelQuantize`` and the
PatchGAN ``NLayerDiscriminator``. The attribute names (``encoder``, ``decoder``, ``quantize``,
``quant_conv``, ``post_quant_conv``) are taming's, so published checkpoints load key for key
(see :mod:`vilgkit_vq.taming_ckpt`). Losses as in taming's ``VQLPIPSWithDiscriminator``: L1 (+ LPIPS)
reconstruction, codebook loss, hinge GAN loss weighted adaptively by the ratio of gradient norms at
the decoder's last layer, the discriminator switched on at ``disc_start``.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from taming.modules.diffusionmodules.model import Decoder, Encoder
from taming.modules.discriminator.model import NLayerDiscriminator, weights_init
from taming.modules.vqvae.quantize import GumbelQuantize, VectorQuantizer2
from torch import nn

from vilgkit.interfaces import ImageTokenizer, Trainable
from vilgkit.registry import IMAGE_TOKENIZERS
from vilgkit_vq.common import check_codes, check_images, edge_weighted_mse, images_from_batch, reconstruction_readouts
from vilgkit_vq.perceptual import LPIPS
from vilgkit_vq.quantizers import full_precision as _full_precision
from vilgkit_vq.quantizers import gumbel_temperature, nearest_code, update_usage_and_restart

AUTOENCODER_MODULES = ("encoder", "decoder", "quantize", "quant_conv", "post_quant_conv")


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss ``½(E[relu(1 - D(x))] + E[relu(1 + D(x̂))])``."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN discriminator loss ``½(E[softplus(-D(x))] + E[softplus(D(x̂))])``."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale · ||∇_L nll|| / (||∇_L g|| + 1e-4)`` at the decoder's last layer ``L``, clamped to [0, 1e4].

    Balances the GAN term against reconstruction whatever their raw magnitudes (Esser et al. 2021, eq. 7).
    """
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = nll_grad.norm() / (g_grad.norm() + 1e-4)
    return weight.clamp(0.0, 1e4).detach() * scale


@IMAGE_TOKENIZERS.register_module()
class VQGANTokenizer(ImageTokenizer, Trainable):
    """VQGAN: taming encoder/decoder + quantiser, trained with reconstruction, codebook and GAN losses.

    Two optimizer groups, stepped in order: ``"autoencoder"`` then ``"discriminator"``.

    Args:
        codebook_size: ``K`` (the paper: 8192).
        code_dim: ``d``, taming's ``embed_dim``.
        z_channels: encoder output channels.
        ch: base channel count (a multiple of 32: taming normalises with 32 groups).
        ch_mult: channel multiplier per resolution; ``f = 2 ** (len(ch_mult) - 1)``.
        num_res_blocks: residual blocks per resolution.
        attn_resolutions: feature-map sizes (for a ``resolution``-pixel input) that get self-attention.
        resolution: the nominal training image size (only places attention; any size divisible by f works).
        dropout: dropout in the residual blocks.
        quantizer: ``"vq"`` (taming ``VectorQuantizer2``, nearest code) or ``"gumbel"``
            (``GumbelQuantize``; hard argmax codes at inference).
        beta: commitment weight of the ``"vq"`` quantiser.
        legacy_beta: taming's published models put ``beta`` on the codebook term by mistake; True
            reproduces that, False (default) applies it to the commitment term as intended.
        restart_dead_codes: re-seed rarely used codes of the ``"vq"`` quantiser at badly represented
            encoder outputs (see :class:`vilgkit_vq.quantizers.VectorQuantizer`); not in taming.
        dead_code_threshold: mean assignments per batch under which a code counts as dead.
        gumbel_kl_weight: weight of the KL-to-uniform term of the ``"gumbel"`` quantiser.
        temperature_start: Gumbel temperature at step 0.
        temperature_end: Gumbel temperature after ``anneal_steps`` (geometric annealing).
        anneal_steps: Gumbel annealing length (0: constant ``temperature_end``).
        pixel_weight: weight of the pixel term.
        pixel_loss: ``"l1"`` (taming) or ``"mse"``. Without LPIPS on mostly-empty images (Shapes) L1's
            median-seeking gradient drives the reconstructions to the background (measured: agreement
            0 % after 800 steps), so the tiny recipe uses ``"mse"``.
        edge_weight: with ``pixel_loss="mse"``, weight each pixel's squared error by
            ``1 + edge_weight * |∇ image|`` (:func:`vilgkit_vq.common.edge_weighted_mse`); 0 = plain MSE.
        codebook_weight: weight of the quantiser's loss.
        perceptual_weight: weight of the LPIPS term; > 0 needs ``lpips_weights`` (an error
            otherwise: never silently skipped). Set 0 to switch it off.
        lpips_weights: local LPIPS weights file (see :class:`vilgkit_vq.perceptual.LPIPS`).
        vgg_weights: local torchvision VGG16 weights, when ``lpips_weights`` holds only the heads.
        disc_start: training step at which the GAN loss (and discriminator training) starts.
        disc_weight: multiplier of the adaptive GAN weight (taming: 0.8 for ImageNet).
        disc_factor: extra factor on both GAN losses once started.
        disc_layers: PatchGAN depth.
        disc_ndf: PatchGAN base channels.
        disc_loss: ``"hinge"`` or ``"vanilla"``.
    """

    #: files outside the run that vilgkit copies into it (``external/``) so the run stays loadable
    EXTERNAL_FILES = ("lpips_weights", "vgg_weights")

    def __init__(
        self,
        codebook_size: int = 8192,
        code_dim: int = 256,
        z_channels: int = 256,
        ch: int = 128,
        ch_mult: list[int] = [1, 1, 2, 4],  # noqa: B006 (a recipe default; never mutated)
        num_res_blocks: int = 2,
        attn_resolutions: list[int] = [32],  # noqa: B006
        resolution: int = 256,
        dropout: float = 0.0,
        quantizer: Literal["vq", "gumbel"] = "vq",
        beta: float = 0.25,
        legacy_beta: bool = False,
        restart_dead_codes: bool = False,
        dead_code_threshold: float = 0.25,
        gumbel_kl_weight: float = 5e-4,
        temperature_start: float = 1.0,
        temperature_end: float = 1.0,
        anneal_steps: int = 0,
        pixel_weight: float = 1.0,
        pixel_loss: Literal["l1", "mse"] = "l1",
        edge_weight: float = 0.0,
        codebook_weight: float = 1.0,
        perceptual_weight: float = 1.0,
        lpips_weights: str | None = None,
        vgg_weights: str | None = None,
        disc_start: int = 10000,
        disc_weight: float = 0.8,
        disc_factor: float = 1.0,
        disc_layers: int = 3,
        disc_ndf: int = 64,
        disc_loss: Literal["hinge", "vanilla"] = "hinge",
    ) -> None:
        super().__init__()
        if perceptual_weight > 0 and lpips_weights is None:
            raise ValueError(
                f"perceptual_weight={perceptual_weight} needs local LPIPS weights (lpips_weights: path); "
                "nothing is downloaded. Give the path, or switch the term off with perceptual_weight: 0"
            )
        if ch % 32:
            raise ValueError(f"ch must be a multiple of 32 (taming's GroupNorm has 32 groups), got {ch}")
        if len(ch_mult) < 2:
            raise ValueError(f"ch_mult needs at least 2 entries (f = 2 ** (len - 1) ≥ 2), got {ch_mult}")
        if (
            quantizer not in ("vq", "gumbel")
            or disc_loss not in ("hinge", "vanilla")
            or pixel_loss not in ("l1", "mse")
        ):
            raise ValueError(f"unknown quantizer {quantizer!r}, disc_loss {disc_loss!r} or pixel_loss {pixel_loss!r}")
        self.codebook_size, self.code_dim = codebook_size, code_dim
        self.downsample = 2 ** (len(ch_mult) - 1)
        self.quantizer_kind = quantizer
        self._ch_mult, self._attn_resolutions, self._dropout = list(ch_mult), list(attn_resolutions), dropout
        self.temperature_start, self.temperature_end, self.anneal_steps = (
            temperature_start,
            temperature_end,
            anneal_steps,
        )
        self.pixel_weight, self.codebook_weight, self.perceptual_weight = (
            pixel_weight,
            codebook_weight,
            perceptual_weight,
        )
        if edge_weight < 0 or (edge_weight > 0 and pixel_loss != "mse"):
            raise ValueError(
                f"edge_weight must be >= 0 and needs pixel_loss='mse', got {edge_weight} with {pixel_loss!r}"
            )
        self.pixel_loss, self.edge_weight = pixel_loss, edge_weight
        self.disc_start, self.disc_weight, self.disc_factor = disc_start, disc_weight, disc_factor
        self._disc_layers, self._disc_ndf = disc_layers, disc_ndf
        self.disc_loss = hinge_d_loss if disc_loss == "hinge" else vanilla_d_loss

        dd = dict(
            ch=ch,
            out_ch=3,
            ch_mult=tuple(ch_mult),
            num_res_blocks=num_res_blocks,
            attn_resolutions=list(attn_resolutions),
            dropout=dropout,
            in_channels=3,
            resolution=resolution,
            z_channels=z_channels,
            double_z=False,
        )
        with contextlib.redirect_stdout(io.StringIO()):  # taming's Decoder prints its z shape
            self.encoder = Encoder(**dd)
            self.decoder = Decoder(**dd)
        if quantizer == "vq":
            self.quant_conv = nn.Conv2d(z_channels, code_dim, 1)
            self.quantize = VectorQuantizer2(
                codebook_size, code_dim, beta=beta, legacy=legacy_beta, sane_index_shape=True
            )
        else:
            # taming's GumbelVQ layout: quant_conv keeps z_channels, the quantiser projects to K logits
            self.quant_conv = nn.Conv2d(z_channels, z_channels, 1)
            self.quantize = GumbelQuantize(
                z_channels, code_dim, n_embed=codebook_size, kl_weight=gumbel_kl_weight, temp_init=temperature_start
            )
        self.post_quant_conv = nn.Conv2d(code_dim, z_channels, 1)
        self.discriminator = NLayerDiscriminator(input_nc=3, n_layers=disc_layers, ndf=disc_ndf).apply(weights_init)
        self.perceptual = LPIPS(lpips_weights, vgg_weights) if perceptual_weight > 0 else None
        if self.perceptual is not None:
            # frozen, externally supplied weights: not part of the tokenizer's saved state
            self.perceptual._register_state_dict_hook(_drop_own_keys)
            self.register_load_state_dict_post_hook(_ignore_missing_perceptual)
        self.register_buffer("step", torch.zeros(1, dtype=torch.long))
        self.dead_code_threshold = dead_code_threshold if (restart_dead_codes and quantizer == "vq") else 0.0
        # usage statistics live beside (not inside) taming's quantiser, keeping its key layout
        self.register_buffer("usage_count", torch.zeros(codebook_size))
        self.register_buffer("usage_steps", torch.zeros(1, dtype=torch.long))
        # (images, detached reconstruction) of this step's autoencoder passes, reused by the
        # discriminator pass on the same micro-batches instead of a second forward
        self._recon_cache: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    @classmethod
    def conformance_args(cls) -> dict[str, Any]:
        """Tiny settings for the registry-wide conformance tests."""
        return dict(
            codebook_size=16,
            code_dim=8,
            z_channels=8,
            ch=32,
            ch_mult=[1, 1, 1],
            num_res_blocks=1,
            attn_resolutions=[],
            resolution=8,
            perceptual_weight=0.0,
            disc_start=0,
            disc_layers=1,
            disc_ndf=8,
        )

    # ----------------------------------------------------------------- ImageTokenizer

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, self.downsample)
        return self.quant_conv(self.encoder(images))

    def inference_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors encoding and decoding depend on (no discriminator, no LPIPS): what identifies
        this tokenizer's codes (code-shard fingerprints), whatever discriminator was built beside it."""
        return {k: v for k, v in self.state_dict().items() if k.split(".")[0] in AUTOENCODER_MODULES}

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        h = self._features(images)
        with _full_precision(h):
            if self.quantizer_kind == "gumbel":
                return self.quantize.proj(h.float()).argmax(dim=1)  # hard, deterministic codes
            flat = rearrange(h.float(), "b d h w -> (b h w) d")
            return nearest_code(flat, self.quantize.embedding.weight.float()).view(h.shape[0], h.shape[2], h.shape[3])

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        check_codes(codes, self.codebook_size)
        table = self.quantize.embed if self.quantizer_kind == "gumbel" else self.quantize.embedding
        return rearrange(table(codes), "b h w d -> b d h w")

    def decode_embedding(self, z_emb: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z_emb)).clamp(-1.0, 1.0)

    def temperature(self, step: int | None = None) -> float:
        """Gumbel temperature at ``step`` (default: the current training step)."""
        step = int(self.step) if step is None else step
        return gumbel_temperature(step, self.temperature_start, self.temperature_end, self.anneal_steps)

    def reconstruct(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training forward: ``(x̂ unclamped, quantiser loss, codes [B, h, w])``."""
        h = self._features(images)
        if self.quantizer_kind == "gumbel":
            self.quantize.temperature = self.temperature()
        with _full_precision(h):  # code assignment in bf16 would pick wrong nearest codes
            z_q, q_loss, (_, _, codes) = self.quantize(h.float())
        if self.training and self.quantizer_kind == "vq":
            flat = rearrange(h.detach().float(), "b d h w -> (b h w) d")
            update_usage_and_restart(
                self.quantize.embedding.weight.data,
                self.usage_count,
                self.usage_steps,
                flat,
                codes.reshape(-1),
                self.dead_code_threshold,
                0.99,
            )
        return self.decoder(self.post_quant_conv(z_q)), q_loss, codes.view(h.shape[0], h.shape[2], h.shape[3])

    def gan_active(self, step: int | None = None) -> bool:
        """Whether the GAN terms are on at ``step`` (delayed discriminator start)."""
        step = int(self.step) if step is None else step
        return step >= self.disc_start and self.disc_factor > 0

    def loss(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Autoencoder losses (the generator side of the GAN) at the current step."""
        # the GAN term must not train the discriminator: its parameters sit out this graph
        self.discriminator.requires_grad_(False)
        try:
            recon, q_loss, codes = self.reconstruct(images)
            if self.training and torch.is_grad_enabled():
                self._remember(images, recon)
            if self.pixel_loss == "l1":
                rec = self.pixel_weight * (images - recon).abs().mean()
            else:
                rec = self.pixel_weight * edge_weighted_mse(recon, images, self.edge_weight)
            nll = rec
            out: dict[str, torch.Tensor] = {"rec": rec}
            if self.perceptual is not None:
                p_loss = self.perceptual(images, recon).mean()
                nll = nll + self.perceptual_weight * p_loss
                out["perceptual"] = p_loss
            total = nll + self.codebook_weight * q_loss
            if self.gan_active():
                g_loss = -self.discriminator(recon).mean()
                if torch.is_grad_enabled() and recon.requires_grad:
                    d_weight = adaptive_weight(nll, g_loss, self.decoder.conv_out.weight, self.disc_weight)
                else:  # evaluation without a graph: the weight is undefined, report the term alone
                    d_weight = torch.zeros((), device=images.device)
                total = total + d_weight * self.disc_factor * g_loss
                out.update(g_loss=g_loss.detach(), d_weight=d_weight)
        finally:
            self.discriminator.requires_grad_(True)
        out.update(loss=total, quant=q_loss.detach())
        with torch.no_grad():
            out.update(reconstruction_readouts(images, recon, codes, self.codebook_size))
            if self.quantizer_kind == "gumbel":
                out["temperature"] = torch.tensor(self.temperature(), device=images.device)
        return out

    def discriminator_loss(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Discriminator losses on real images and (detached) reconstructions of the same batch."""
        if not self.gan_active():
            # before disc_start nothing trains the discriminator; a graph-less zero steps nothing
            self._recon_cache.clear()
            return {"loss": torch.zeros((), device=images.device, requires_grad=True)}
        recon = self._recall(images)
        if recon is None:  # no autoencoder pass on this batch (e.g. another engine's order)
            with torch.no_grad():
                recon = self.reconstruct(images)[0]
        logits_real = self.discriminator(images.detach())
        logits_fake = self.discriminator(recon.detach())
        d_loss = self.disc_factor * self.disc_loss(logits_real, logits_fake)
        return {"loss": d_loss, "logits_real": logits_real.detach().mean(), "logits_fake": logits_fake.detach().mean()}

    def _remember(self, images: torch.Tensor, recon: torch.Tensor) -> None:
        step = int(self.step)
        # only this step's micro-batches: older reconstructions came from other weights
        self._recon_cache = [e for e in self._recon_cache if e[0] == step][-15:] + [
            (step, images.detach(), recon.detach())
        ]

    def _recall(self, images: torch.Tensor) -> torch.Tensor | None:
        step = int(self.step)
        for i in reversed(range(len(self._recon_cache))):
            seen_step, seen, recon = self._recon_cache[i]
            if seen_step == step and (
                seen is images
                or (seen.shape == images.shape and seen.device == images.device and torch.equal(seen, images))
            ):
                del self._recon_cache[i]
                return recon
        return None

    # ----------------------------------------------------------------- Trainable

    def full_precision_modules(self) -> list[nn.Module]:
        """Submodules whose parameters must stay fp32 under a mixed-precision strategy: the code
        assignment compares fp32 features with the codebook (bf16 would pick wrong nearest codes,
        and taming's quantiser multiplies the two, which must share a dtype)."""
        return [self.quantize]

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        autoencoder = [p for name in AUTOENCODER_MODULES for p in getattr(self, name).parameters() if p.requires_grad]
        return {"autoencoder": autoencoder, "discriminator": list(self.discriminator.parameters())}

    def forward(self, batch: Any, group: str = "autoencoder", step: int = 0) -> dict[str, torch.Tensor]:
        """The training pass for optimizer ``group`` at ``step``: the named losses (outputs and losses
        are one here: the losses run parameters of their own)."""
        self.step.fill_(step)
        images = images_from_batch(batch)
        if group == "autoencoder":
            return self.loss(images)
        if group == "discriminator":
            return self.discriminator_loss(images)
        raise KeyError(f"VQGANTokenizer has optimizer groups 'autoencoder' and 'discriminator', got {group!r}")


def _drop_own_keys(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[key]


def _ignore_missing_perceptual(module: nn.Module, incompatible: Any) -> None:
    incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if not k.startswith("perceptual.")]
