"""Write a :class:`VQGANTokenizer` as a taming-transformers checkpoint (``.ckpt`` + ``model.yaml``).

The inverse of :mod:`vilgkit_vq.taming_ckpt`: a VQGAN trained here can be used by taming's own
code (``VQModel`` / ``GumbelVQ``), and tests can round-trip the published layout.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from vilgkit_vq.vqgan import AUTOENCODER_MODULES, VQGANTokenizer


def taming_config(tok: VQGANTokenizer) -> dict:
    """The ``model.yaml`` mapping taming would have written for this tokenizer."""
    enc = tok.encoder
    gumbel = tok.quantizer_kind == "gumbel"
    params = {
        "embed_dim": tok.code_dim,
        "n_embed": tok.codebook_size,
        "ddconfig": {
            "double_z": False,
            "z_channels": tok.post_quant_conv.out_channels,
            "resolution": enc.resolution,
            "in_channels": 3,
            "out_ch": 3,
            "ch": enc.ch,
            "ch_mult": [int(m) for m in tok._ch_mult],
            "num_res_blocks": enc.num_res_blocks,
            "attn_resolutions": [int(r) for r in tok._attn_resolutions],
            "dropout": float(tok._dropout),
        },
        "lossconfig": {
            "target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
            "params": {
                "disc_start": tok.disc_start,
                "disc_weight": tok.disc_weight,
                "codebook_weight": tok.codebook_weight,
                "disc_factor": tok.disc_factor,
                "disc_num_layers": tok._disc_layers,
                "disc_ndf": tok._disc_ndf,
            },
        },
    }
    if gumbel:
        params["kl_weight"] = float(tok.quantize.kl_weight)
        params["temperature_scheduler_config"] = {
            "target": "taming.lr_scheduler.LambdaWarmUpCosineScheduler",
            "params": {
                "warm_up_steps": 0,
                "max_decay_steps": max(tok.anneal_steps, 1),
                "lr_start": 0.9,
                "lr_max": tok.temperature_start,
                "lr_min": tok.temperature_end,
            },
        }
    target = "taming.models.vqgan.GumbelVQ" if gumbel else "taming.models.vqgan.VQModel"
    return {"model": {"base_learning_rate": 4.5e-6, "target": target, "params": params}}


def export_taming_checkpoint(tok: VQGANTokenizer, folder: str | Path, name: str = "last.ckpt") -> tuple[Path, Path]:
    """Write ``folder/name`` (Lightning-style ``{"state_dict", "global_step"}``) and ``folder/model.yaml``.

    Returns:
        ``(checkpoint path, config path)``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in tok.state_dict().items() if k.split(".")[0] in AUTOENCODER_MODULES}
    state.update(
        {f"loss.discriminator.{k}": v.detach().cpu().clone() for k, v in tok.discriminator.state_dict().items()}
    )
    ckpt = folder / name
    torch.save({"state_dict": state, "global_step": int(tok.step), "epoch": 0}, ckpt)
    cfg = folder / "model.yaml"
    cfg.write_text(yaml.safe_dump(taming_config(tok), sort_keys=False))
    return ckpt, cfg
