"""The end-to-end reconstructor (paper §3.1.3 green path, §5, Table 7).

The last-layer hidden states of the image tokens are mapped non-linearly to ``z_emb`` (h×w×d) and
decoded by a decoder initialised from the image tokenizer's. Because no discrete ID lookup sits
between them, the reconstruction loss back-propagates into the generator; the generator stage adds
``reconstructor_weight * loss`` to the generation loss (the paper weighs both equally).

What the map sees. In :class:`~vilgkit.models.UnifiedTransformer` the image target is shifted: slot
``k`` holds code ``k-1`` and its last-layer state is the one that *predicts* code ``k`` (text,
all earlier codes, the model's belief about code ``k``), but it has not seen which code ``k`` was
finally sampled. So, by default (``use_codes=True``), the map also reads the codebook embedding
of code ``k``, and adds its output to that embedding::

    z_k = e(c_k) + MLP([LayerNorm(hidden_k), e(c_k)])

With the MLP's last layer initialised near zero (``map_init_std``) the reconstructor starts as the
two-stage one (tokenizer decode) and learns how much context to use. ``use_codes=False`` is the
literal reading, ``z_k = MLP(LayerNorm(hidden_k))``.

Dimension key: B batch, n = h*w image slots, C generator hidden size, d code dimension, W map width.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vilgkit.interfaces import ImageTokenizer, Reconstructor
from vilgkit.metrics.psnr import psnr
from vilgkit.registry import RECONSTRUCTORS
from vilgkit_reconstruct.common import check_codes_hidden


def _freeze_unused_by_decoding(tok: ImageTokenizer) -> None:
    """Turn off gradients of the parameters the decode path (``embed`` + ``decode_embedding``) never uses.

    The copy of the tokenizer still holds its encoder; a tiny probe decode finds what the decoding
    path touches, generically for any :class:`ImageTokenizer`, so optimizers and DDP see only
    parameters that actually receive gradients.
    """
    params = [p for p in tok.parameters()]
    device = params[0].device if params else torch.device("cpu")
    tok.requires_grad_(True)
    with torch.enable_grad(), torch.autocast(device_type=device.type, enabled=False):
        codes = torch.zeros(1, 2, 2, dtype=torch.long, device=device)
        z = tok.embed(codes).detach().requires_grad_(True)
        emb = tok.embed(codes)
        # sum of both paths; the clamp in decode_embedding may zero gradients but not their existence
        out = tok.decode_embedding(z).sum() + emb.sum()
        used = torch.autograd.grad(out, params, allow_unused=True)
    for p, g in zip(params, used):
        p.requires_grad_(g is not None)


@RECONSTRUCTORS.register_module()
class EndToEndReconstructor(Reconstructor):
    """Decode the generator's image hidden states; trained jointly with the generator.

    The image tokenizer and the generator's hidden size are handed over with :meth:`attach` (the
    generator stage and :class:`vilgkit.Pipeline` call it), because the tokenizer is trained by an
    earlier stage: attaching copies the tokenizer (its codebook and decoder become this module's
    trainable weights, saved in ``reconstructor.safetensors``) and builds the map.

    Args:
        hidden_size: the generator's hidden size ``C`` (default: given by :meth:`attach`).
        map_width: width ``W`` of the map's hidden layer (default ``2 * max(C, d)``).
        use_codes: also feed the sampled code's embedding to the map and add it (see the module doc).
        map_init_std: std of the map's last layer at initialisation (small: start near the tokenizer's decode;
            not zero, so gradients reach the generator from the first step).
        rec_loss: ``"mse"`` or ``"l1"`` between the decoded and the real images.
        image_tokenizer: optionally attach a trained tokenizer right away (then ``hidden_size`` is required).
    """

    end_to_end = True

    def __init__(
        self,
        hidden_size: int | None = None,
        map_width: int | None = None,
        use_codes: bool = True,
        map_init_std: float = 1e-3,
        rec_loss: Literal["mse", "l1"] = "mse",
        image_tokenizer: ImageTokenizer | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("hidden_size", hidden_size), ("map_width", map_width)):
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if map_init_std < 0:
            raise ValueError(f"map_init_std must be >= 0, got {map_init_std}")
        if rec_loss not in ("mse", "l1"):
            raise ValueError(f"rec_loss must be 'mse' or 'l1', got {rec_loss!r}")
        self.hidden_size, self.map_width, self.use_codes = hidden_size, map_width, use_codes
        self.map_init_std, self.rec_loss = map_init_std, rec_loss
        self.decoder: ImageTokenizer | None = None
        if image_tokenizer is not None:
            self.attach(image_tokenizer, hidden_size)

    @classmethod
    def conformance_args(cls) -> dict[str, Any]:
        """Tiny attached settings for the conformance tests (a tiny dVAE from the built-in vq plugin)."""
        try:
            from vilgkit_vq import DVAETokenizer
        except ImportError:  # vq plugin blocked: an unattached reconstructor still builds
            return {"hidden_size": 8}
        return {"hidden_size": 8, "image_tokenizer": DVAETokenizer(**DVAETokenizer.conformance_args())}

    # ------------------------------------------------------------------ attach

    @property
    def is_attached(self) -> bool:
        return self.decoder is not None

    def attach(self, image_tokenizer: ImageTokenizer, hidden_size: int | None = None) -> EndToEndReconstructor:
        """Copy ``image_tokenizer`` (decoder initialised from it) and build the map for ``hidden_size``.

        Attaching again keeps the current (possibly trained) weights: it only checks that the
        generator's hidden size and the code dimension still fit.
        """
        if not isinstance(image_tokenizer, ImageTokenizer):
            raise TypeError(f"attach needs an ImageTokenizer, got {type(image_tokenizer).__name__}")
        hidden_size = hidden_size if hidden_size is not None else self.hidden_size
        if hidden_size is None:
            raise ValueError("EndToEndReconstructor.attach needs the generator's hidden_size")
        if self.hidden_size is not None and hidden_size != self.hidden_size:
            raise ValueError(f"the recipe says hidden_size={self.hidden_size} but the generator has {hidden_size}")
        d = int(image_tokenizer.code_dim)
        if self.is_attached:
            if d != self.decoder.code_dim:
                raise ValueError(f"attached to a tokenizer with code_dim {self.decoder.code_dim}, got one with {d}")
            return self
        self.hidden_size = int(hidden_size)
        decoder = copy.deepcopy(image_tokenizer)
        _freeze_unused_by_decoding(decoder)
        self.decoder = decoder.train(self.training)
        width = self.map_width or 2 * max(self.hidden_size, d)
        in_dim = self.hidden_size + (d if self.use_codes else 0)
        self.norm = nn.LayerNorm(self.hidden_size)
        self.map = nn.Sequential(nn.Linear(in_dim, width), nn.GELU(), nn.Linear(width, d))
        nn.init.normal_(self.map[2].weight, std=self.map_init_std)
        nn.init.zeros_(self.map[2].bias)
        device = next(decoder.parameters()).device
        self.norm.to(device)
        self.map.to(device)
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        if not self.is_attached and any(k.startswith(prefix) for k in state_dict):
            raise RuntimeError(
                "EndToEndReconstructor: call attach(image_tokenizer, hidden_size) before loading weights "
                "(the decoder and the map are built when the tokenizer is attached)"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ Reconstructor

    def z_embedding(self, codes: torch.Tensor, image_hidden: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, h, w]`` + hidden states ``[B, n, C]`` → ``z_emb [B, d, h, w]``."""
        if not self.is_attached:
            raise RuntimeError("EndToEndReconstructor has no decoder: call attach(image_tokenizer, hidden_size) first")
        if image_hidden is None:
            raise ValueError(
                "the end-to-end reconstructor decodes the generator's image hidden states: pass image_hidden "
                "(e.g. generator.image_hidden_states(text_ids, text_mask, codes))"
            )
        check_codes_hidden(codes, image_hidden)
        if image_hidden.shape[-1] != self.hidden_size:
            raise ValueError(f"hidden states have width {image_hidden.shape[-1]}, the map expects {self.hidden_size}")
        h, w = codes.shape[1:]
        device = self.norm.weight.device
        x = self.norm(image_hidden.to(device))  # [B, n, C]
        if not self.use_codes:
            return rearrange(self.map(x), "b (h w) d -> b d h w", h=h, w=w)
        e = rearrange(self.decoder.embed(codes.to(device)), "b d h w -> b (h w) d")
        z = e + self.map(torch.cat([x, e.to(x.dtype)], dim=-1))  # [B, n, d]
        return rearrange(z, "b (h w) d -> b d h w", h=h, w=w)

    def reconstruct(self, codes: torch.Tensor, image_hidden: torch.Tensor | None = None) -> torch.Tensor:
        """Codes ``[B, h, w]`` and hidden states ``[B, h*w, C]`` → images ``[B, 3, H, W]`` in [-1, 1]."""
        return self.decoder.decode_embedding(self.z_embedding(codes, image_hidden))

    def loss(
        self, images: torch.Tensor, codes: torch.Tensor, image_hidden: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Reconstruction loss (``rec_loss``) against the real images; differentiable in ``image_hidden``."""
        recon = self.reconstruct(codes, image_hidden).float()
        images = images.to(recon.device).float()
        rec = F.mse_loss(recon, images) if self.rec_loss == "mse" else F.l1_loss(recon, images)
        with torch.no_grad():
            quality = psnr(images, recon)
        return {"loss": rec, "psnr": quality}
