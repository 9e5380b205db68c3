"""The three tokenizers: shapes for f = 4, 8, 16, gradients, Gumbel hard codes, VQGAN's GAN mechanics."""

import pytest
import torch
from safetensors.torch import save_file

from vilgkit_vq import DVAETokenizer, VQGANTokenizer, VQVAETokenizer
from vilgkit_vq.perceptual import LPIPS

TINY = dict(codebook_size=16, code_dim=8, hidden=8)
TINY_GAN = dict(
    codebook_size=16,
    code_dim=8,
    z_channels=8,
    ch=32,
    num_res_blocks=1,
    attn_resolutions=[],
    perceptual_weight=0.0,
    disc_layers=1,
    disc_ndf=8,
)


@pytest.mark.parametrize("f", [4, 8, 16])
@pytest.mark.parametrize("cls", [VQVAETokenizer, DVAETokenizer])
def test_any_size_divisible_by_f(cls, f):
    tok = cls(downsample=f, **TINY).eval()
    x = torch.rand(2, 3, 2 * f, 3 * f) * 2 - 1
    with torch.no_grad():
        codes = tok.encode(x)
        assert codes.shape == (2, 2, 3) and codes.dtype == torch.long
        assert tok.decode(codes).shape == x.shape
        assert tok.embed(codes).shape == (2, 8, 2, 3)
    with pytest.raises(ValueError, match="divisible"):
        tok.encode(torch.zeros(1, 3, 2 * f + 2, 2 * f))


def test_vqgan_downsampling_factors():
    for mult, f in (([1, 1, 1], 4), ([1, 1, 1, 1], 8), ([1, 1, 1, 1, 1], 16)):
        tok = VQGANTokenizer(ch_mult=mult, **TINY_GAN).eval()
        assert tok.downsample == f
        with torch.no_grad():
            assert tok.encode(torch.zeros(1, 3, f, 2 * f)).shape == (1, 1, 2)


def test_bad_inputs_refused():
    tok = VQVAETokenizer(downsample=4, **TINY)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        tok.encode(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="codes must lie"):
        tok.decode(torch.full((1, 2, 2), 16))
    with pytest.raises(ValueError, match="power of two"):
        VQVAETokenizer(downsample=6)
    with pytest.raises(ValueError, match="channel_mult"):
        VQVAETokenizer(downsample=8, channel_mult=[1, 2])
    with pytest.raises(TypeError, match="'image'"):
        tok({"caption": ["x"]}, "main", 0)


def test_straight_through_gradient_reaches_encoder():
    """Only the reconstruction term: the encoder can get gradients through the quantiser alone by ST."""
    torch.manual_seed(0)
    tok = VQVAETokenizer(downsample=4, **TINY)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    recon, _, _ = tok.reconstruct(x)
    torch.nn.functional.mse_loss(recon, x).backward()
    grads = [p.grad for p in tok.encoder.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_dvae_hard_codes_at_inference_and_annealing():
    torch.manual_seed(0)
    tok = DVAETokenizer(downsample=4, temperature_start=1.0, temperature_end=0.0625, anneal_steps=100, **TINY)
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    tok.eval()
    with torch.no_grad():
        codes = tok.encode(x)
        assert torch.equal(codes, tok.encode(x))  # deterministic
        assert torch.equal(codes, tok.logits(x).argmax(1))
    tok.train()
    losses = tok({"image": x}, "main", 50)
    assert losses["temperature"].item() == pytest.approx(0.25)
    assert int(tok.step) == 50 and tok.temperature() == pytest.approx(0.25)
    losses["loss"].backward()
    assert tok.encoder.net[0].weight.grad.abs().sum() > 0  # the relaxation is differentiable
    # a straight-through relaxation is exactly one-hot in the forward pass
    st = DVAETokenizer(downsample=4, straight_through=True, **TINY)
    z = st.relaxed_embedding(torch.randn(2, 16, 2, 2), 1.0)
    rows = st.codebook.weight
    flat = z.permute(0, 2, 3, 1).reshape(-1, 8)
    assert all(any(torch.allclose(v, r, atol=1e-6) for r in rows) for v in flat)


def test_dvae_straight_through_from_a_step():
    tok = DVAETokenizer(downsample=4, straight_through=True, straight_through_start=10, **TINY)
    assert not tok.hard_samples(9) and tok.hard_samples(10)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    tok(x, "main", 3)
    z = tok.relaxed_embedding(torch.randn(2, 16, 2, 2), 1.0)  # soft: a mixture, not a codebook row
    assert not any(torch.allclose(z[0, :, 0, 0], r, atol=1e-6) for r in tok.codebook.weight)
    tok(x, "main", 10)
    z = tok.relaxed_embedding(torch.randn(2, 16, 2, 2), 1.0)
    assert any(torch.allclose(z[0, :, 0, 0], r, atol=1e-6) for r in tok.codebook.weight)
    assert not DVAETokenizer(downsample=4, straight_through_start=0, **TINY).hard_samples(100)  # needs straight_through
    with pytest.raises(ValueError, match="straight_through_start"):
        DVAETokenizer(downsample=4, straight_through_start=-1, **TINY)


def test_vqgan_pixel_loss_choice():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    for kind in ("l1", "mse"):
        tok = VQGANTokenizer(ch_mult=[1, 1, 1], pixel_loss=kind, disc_start=100, **TINY_GAN)
        torch.manual_seed(1)
        out = tok(x, "autoencoder", 0)
        tok.eval()
        torch.manual_seed(1)
        with torch.no_grad():
            recon = tok.reconstruct(x)[0]
        diff = x - recon
        expect = diff.abs().mean() if kind == "l1" else diff.square().mean()
        assert out["rec"].item() == pytest.approx(expect.item(), rel=1e-4)
    with pytest.raises(ValueError, match="pixel_loss"):
        VQGANTokenizer(ch_mult=[1, 1, 1], pixel_loss="huber", **TINY_GAN)


def test_dvae_kl_warmup():
    tok = DVAETokenizer(downsample=4, kl_weight=0.5, kl_warmup_steps=10, **TINY)
    assert tok.kl_weight_at(0) == 0.0 and tok.kl_weight_at(5) == pytest.approx(0.25) and tok.kl_weight_at(50) == 0.5


def test_vqgan_gumbel_hard_codes_at_inference():
    torch.manual_seed(0)
    tok = VQGANTokenizer(
        ch_mult=[1, 1, 1], quantizer="gumbel", temperature_start=1.0, temperature_end=0.5, anneal_steps=10, **TINY_GAN
    ).eval()
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        assert torch.equal(tok.encode(x), tok.encode(x))
    assert tok.temperature(10) == pytest.approx(0.5)


def test_perceptual_term_needs_local_weights(tmp_path):
    with pytest.raises(ValueError, match="perceptual_weight: 0"):
        VQGANTokenizer(ch_mult=[1, 1, 1], **{**TINY_GAN, "perceptual_weight": 1.0})
    # a weights file in LPIPS's layout (random values: the mechanics, not the metric, are tested)
    torch.manual_seed(0)
    reference = LPIPS.__new__(LPIPS)
    torch.nn.Module.__init__(reference)
    state = _random_lpips_state()
    save_file(state, str(tmp_path / "lpips.safetensors"))
    lpips = LPIPS(str(tmp_path / "lpips.safetensors"))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(lpips(x, x), torch.zeros(2), atol=1e-6)
    assert (lpips(x, -x) > 0).all()
    missing = {k: v for k, v in state.items() if not k.startswith("lin4")}
    save_file(missing, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match="lin4.model.1.weight"):
        LPIPS(str(tmp_path / "partial.safetensors"))
    tok = VQGANTokenizer(
        ch_mult=[1, 1, 1],
        **{**TINY_GAN, "perceptual_weight": 1.0, "lpips_weights": str(tmp_path / "lpips.safetensors")},
    )
    assert "perceptual" in tok.loss(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert not any(k.startswith("perceptual.") for k in tok.state_dict())  # external weights are not saved


def _random_lpips_state() -> dict:
    from torchvision.models import vgg16

    feats = vgg16(weights=None).features
    slices = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
    state = {}
    for i, (lo, hi) in enumerate(slices, start=1):
        for idx in range(lo, hi):
            for name, p in feats[idx].named_parameters():
                state[f"net.slice{i}.{idx}.{name}"] = p.detach().clone()
    for i, c in enumerate((64, 128, 256, 512, 512)):
        state[f"lin{i}.model.1.weight"] = torch.rand(1, c, 1, 1)
    return state


def test_vqgan_groups_and_delayed_discriminator():
    torch.manual_seed(0)
    tok = VQGANTokenizer(ch_mult=[1, 1, 1], disc_start=5, **TINY_GAN)
    groups = tok.optimizer_groups()
    assert list(groups) == ["autoencoder", "discriminator"]
    assert not {id(p) for p in groups["autoencoder"]} & {id(p) for p in groups["discriminator"]}
    batch = {"image": torch.rand(2, 3, 16, 16) * 2 - 1}
    before = tok(batch, "autoencoder", 4)
    assert "g_loss" not in before  # the GAN term is off before disc_start
    d = tok(batch, "discriminator", 4)
    assert d["loss"].item() == 0.0 and d["loss"].grad_fn is None
    tok.zero_grad()
    after = tok(batch, "autoencoder", 5)
    assert "g_loss" in after and after["d_weight"].item() > 0
    after["loss"].backward()
    # the generator-side loss must not train the discriminator
    assert all(p.grad is None for p in tok.discriminator.parameters())
    assert tok.decoder.conv_out.weight.grad.abs().sum() > 0
    tok.zero_grad(set_to_none=True)
    d = tok(batch, "discriminator", 5)
    assert not tok._recon_cache  # the autoencoder pass's reconstruction was reused, not recomputed
    d["loss"].backward()
    assert all(p.grad is not None for p in tok.discriminator.parameters())
    assert all(p.grad is None for p in tok.encoder.parameters())


def test_vqgan_dead_code_restart_keeps_taming_layout():
    torch.manual_seed(0)
    tok = VQGANTokenizer(ch_mult=[1, 1, 1], restart_dead_codes=True, dead_code_threshold=0.5, **TINY_GAN)
    before = tok.quantize.embedding.weight.detach().clone()
    tok.train()
    tok({"image": torch.rand(2, 3, 8, 8) * 2 - 1}, "autoencoder", 0)
    # 8 vectors for 16 codes: at least 8 codes are unused, hence re-seeded at encoder outputs
    changed = (tok.quantize.embedding.weight != before).any(1)
    assert int(changed.sum()) >= 8
    assert all(k.split(".")[0] != "quantize" or "usage" not in k for k in tok.state_dict())


def test_vqvae_channels_last_encode_matches_the_training_path():
    # encode() runs the encoder channels-last on the CPU (faster); its codes must be the ones the
    # contiguous training path (reconstruct) assigns, up to floating-point ties
    torch.manual_seed(0)
    tok = VQVAETokenizer(downsample=8, codebook_size=256, code_dim=16, hidden=16).eval()
    x = torch.rand(16, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        fast = tok.encode(x)
        _, _, reference = tok.reconstruct(x.contiguous())
    assert fast.is_contiguous() and fast.shape == reference.shape == (16, 8, 8)
    assert (fast == reference).float().mean() >= 0.999
