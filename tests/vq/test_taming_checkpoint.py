"""Published taming VQGAN checkpoints: built here from taming's own modules in the published key
layout (Lightning ``.ckpt`` + ``model.yaml``), loaded by ``TamingVQGAN``, compared to taming."""

import argparse
import contextlib
import io
import os
import pickle
from pathlib import Path

import pytest
import torch
import yaml
from taming.modules.diffusionmodules.model import Decoder, Encoder
from taming.modules.discriminator.model import NLayerDiscriminator
from taming.modules.vqvae.quantize import GumbelQuantize, VectorQuantizer2

from vilgkit_vq.taming_ckpt import CheckpointKeyError, TamingVQGAN, read_lightning_checkpoint

DD = dict(
    double_z=False,
    z_channels=16,
    resolution=32,
    in_channels=3,
    out_ch=3,
    ch=32,
    ch_mult=[1, 2, 2],
    num_res_blocks=1,
    attn_resolutions=[8],
    dropout=0.0,
)
N_EMBED, EMBED_DIM = 64, 16
MARKER = Path(os.environ.get("TMPDIR", "/tmp")) / "vilgkit-taming-test-marker"


def _write_marker(path: str) -> None:  # would run if the loader executed code from the file
    Path(path).write_text("executed")


class Hostile:
    """A metadata object whose unpickling would run code."""

    def __reduce__(self):
        return (_write_marker, (str(MARKER),))


class TamingReference(torch.nn.Module):
    """taming's VQModel / GumbelVQ module tree (without Lightning), as the published files hold it."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        with contextlib.redirect_stdout(io.StringIO()):
            self.encoder, self.decoder = Encoder(**DD), Decoder(**DD)
        z = DD["z_channels"]
        if kind == "vq":
            self.quantize = VectorQuantizer2(N_EMBED, EMBED_DIM, beta=0.25)
            self.quant_conv = torch.nn.Conv2d(z, EMBED_DIM, 1)
        else:
            self.quantize = GumbelQuantize(z, EMBED_DIM, n_embed=N_EMBED, kl_weight=1e-8)
            self.quant_conv = torch.nn.Conv2d(z, EMBED_DIM, 1)  # GumbelVQ: embed_dim == z_channels
        self.post_quant_conv = torch.nn.Conv2d(EMBED_DIM, z, 1)
        self.kind = kind

    @torch.no_grad()
    def codes_and_images(self, x):
        h = self.quant_conv(self.encoder(x))
        b, _, hh, ww = h.shape
        if self.kind == "vq":
            _, _, (_, _, idx) = self.quantize(h)
        else:  # taming samples Gumbel noise even in eval; its deterministic code is the logit argmax
            _, _, _, logits = self.quantize(h, return_logits=True)
            idx = logits.argmax(1)
        idx = idx.reshape(-1)
        z_q = self.quantize.get_codebook_entry(idx, (b, hh, ww, EMBED_DIM))
        return idx.view(b, hh, ww), self.decoder(self.post_quant_conv(z_q))


def _publish(tmp_path: Path, kind: str, extra_meta: bool = True) -> tuple[TamingReference, Path, Path]:
    torch.manual_seed(0 if kind == "vq" else 1)
    ref = TamingReference(kind).eval()
    for p in ref.parameters():  # break symmetry so every code and channel matters
        p.data.add_(0.05 * torch.randn_like(p))
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    disc = NLayerDiscriminator(input_nc=3, n_layers=2, ndf=16)
    state.update({f"loss.discriminator.{k}": v for k, v in disc.state_dict().items()})
    state["loss.perceptual_loss.lin0.model.1.weight"] = torch.randn(1, 64, 1, 1)  # ignored too
    ckpt = {"state_dict": state, "global_step": 1234, "epoch": 7}
    if extra_meta:  # what Lightning files carry besides tensors
        ckpt["hyper_parameters"] = argparse.Namespace(lr=4.5e-6)
        ckpt["callbacks"] = {"ModelCheckpoint": Hostile()}
    path = tmp_path / f"{kind}.ckpt"
    torch.save(ckpt, path)
    target = "taming.models.vqgan.VQModel" if kind == "vq" else "taming.models.vqgan.GumbelVQ"
    params = {
        "embed_dim": EMBED_DIM,
        "n_embed": N_EMBED,
        "ddconfig": DD,
        "lossconfig": {
            "target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
            "params": {"disc_start": 10, "disc_weight": 0.8, "disc_num_layers": 2, "disc_ndf": 16},
        },
    }
    if kind == "gumbel":
        params["kl_weight"] = 1e-8
        params["temperature_scheduler_config"] = {
            "target": "taming.lr_scheduler.LambdaWarmUpCosineScheduler",
            "params": {"warm_up_steps": 0, "max_decay_steps": 1000, "lr_start": 0.9, "lr_max": 0.9, "lr_min": 1e-6},
        }
    cfg = tmp_path / f"{kind}.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"base_learning_rate": 4.5e-6, "target": target, "params": params}}))
    return ref, path, cfg


@pytest.mark.parametrize("kind", ["vq", "gumbel"])
def test_published_checkpoint_gives_identical_codes_and_images(tmp_path, kind):
    ref, ckpt, cfg = _publish(tmp_path, kind)
    MARKER.unlink(missing_ok=True)
    tok = TamingVQGAN(checkpoint=str(ckpt), config=str(cfg)).eval()
    assert not MARKER.exists(), "the loader executed code from the checkpoint"
    assert tok.kind == kind and tok.codebook_size == N_EMBED and tok.downsample == 4
    torch.manual_seed(2)
    x = torch.rand(3, 3, 32, 48) * 2 - 1  # non-square, any size divisible by f
    want_codes, want_images = ref.codes_and_images(x)
    with torch.no_grad():
        codes = tok.encode(x)
        images = tok.decode(codes)
        raw = tok.decoder(tok.post_quant_conv(tok.embed(codes)))
    assert torch.equal(codes, want_codes)
    assert len(codes.unique()) > 1
    assert (raw - want_images).abs().max().item() < 1e-5
    assert (images - want_images.clamp(-1, 1)).abs().max().item() < 1e-5
    assert tok.encode(x).equal(codes)  # hard, deterministic codes at inference (also for Gumbel)


def test_metadata_objects_never_run(tmp_path):
    _, ckpt, _ = _publish(tmp_path, "vq")
    with pytest.raises(pickle.UnpicklingError):  # the plain weights-only loader refuses the metadata
        torch.load(ckpt, weights_only=True)
    MARKER.unlink(missing_ok=True)
    state = read_lightning_checkpoint(ckpt)
    assert not MARKER.exists()
    assert "encoder.conv_in.weight" in state and all(isinstance(v, torch.Tensor) for v in state.values())


def test_bad_checkpoint_is_refused_listing_keys(tmp_path):
    _, ckpt, cfg = _publish(tmp_path, "vq", extra_meta=False)
    data = torch.load(ckpt, weights_only=True)
    sd = data["state_dict"]
    del sd["decoder.conv_out.bias"]
    sd["encoder.extra_layer.weight"] = torch.zeros(1)
    sd["quantize.embedding.weight"] = torch.zeros(N_EMBED + 1, EMBED_DIM)
    torch.save(data, ckpt)
    with pytest.raises(CheckpointKeyError) as err:
        TamingVQGAN(checkpoint=str(ckpt), config=str(cfg))
    msg = str(err.value)
    assert "decoder.conv_out.bias" in msg and "encoder.extra_layer.weight" in msg
    assert "quantize.embedding.weight" in msg and "(65, 16)" in msg


def test_bad_config_and_codebook_mismatch(tmp_path):
    _, ckpt, cfg = _publish(tmp_path, "vq", extra_meta=False)
    with pytest.raises(ValueError, match="n_embed=64"):
        TamingVQGAN(checkpoint=str(ckpt), config=str(cfg), codebook_size=8192)
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({"model": {"target": "taming.models.cond_transformer.Net2NetTransformer", "params": {}}})
    )
    with pytest.raises(ValueError, match="VQModel"):
        TamingVQGAN(checkpoint=str(ckpt), config=str(bad))
    with pytest.raises(FileNotFoundError):
        TamingVQGAN(checkpoint=str(tmp_path / "nope.ckpt"), config=str(cfg))
