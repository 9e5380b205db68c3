"""Loss terms and quantiser mechanics against values computed by hand on tiny tensors."""

import math

import pytest
import torch
import torch.nn.functional as F

from vilgkit_vq.common import edge_weighted_mse
from vilgkit_vq.quantizers import (
    VectorQuantizer,
    batch_usage_deficit,
    codebook_usage,
    gumbel_temperature,
    kl_to_uniform,
    nearest_code,
)
from vilgkit_vq.vqgan import adaptive_weight, hinge_d_loss, vanilla_d_loss
from vilgkit_vq.vqvae import VQVAETokenizer

CODEBOOK = torch.tensor([[0.0, 0.0], [1.0, 1.0], [3.0, 0.0]])
# three vectors at a 1×3 grid: nearest codes 0, 1, 2 (the last is 1 from [3,0] and √2 from [1,1])
Z = torch.tensor([[0.2, 0.1], [0.9, 1.2], [2.0, 0.0]]).t().reshape(1, 2, 1, 3)


def _quantizer(**kw) -> VectorQuantizer:
    vq = VectorQuantizer(3, 2, **kw)
    vq.embedding.weight.data.copy_(CODEBOOK)
    if vq.ema:  # the EMA state starts as "each code seen once at its own position"
        vq.ema_sum.copy_(CODEBOOK)
    return vq


def test_nearest_code_and_loss_terms_by_hand():
    vq = _quantizer(beta=0.25)
    out = vq(Z.clone().requires_grad_(True))
    assert out.codes.tolist() == [[[0, 1, 2]]]
    # squared errors per element: (0.04, 0.01), (0.01, 0.04), (1.0, 0.0) → mean 1.10 / 6
    mse = (0.04 + 0.01 + 0.01 + 0.04 + 1.0 + 0.0) / 6
    assert out.losses["codebook"].item() == pytest.approx(mse, rel=1e-6)
    assert out.losses["commit"].item() == pytest.approx(0.25 * mse, rel=1e-6)
    assert torch.allclose(out.z_q, CODEBOOK.t().reshape(1, 2, 1, 3))  # forward value is the code
    assert nearest_code(torch.tensor([[2.1, 0.3]]), CODEBOOK).tolist() == [2]


def test_loss_gradients_go_where_eq1_says():
    """codebook term moves only the codebook; commitment only the encoder output."""
    vq = _quantizer(beta=0.25)
    z = Z.clone().requires_grad_(True)
    vq(z).losses["codebook"].backward()
    assert z.grad is None or torch.count_nonzero(z.grad) == 0
    # d/de mean((e - z)^2) = 2 (e - z) / 6 for the assigned rows
    expect = 2 * (CODEBOOK - Z.reshape(2, 3).t()) / 6
    assert torch.allclose(vq.embedding.weight.grad, expect, atol=1e-6)
    vq.zero_grad()
    z = Z.clone().requires_grad_(True)
    vq(z).losses["commit"].backward()
    assert vq.embedding.weight.grad is None or torch.count_nonzero(vq.embedding.weight.grad) == 0
    assert torch.allclose(z.grad, 0.25 * 2 * (Z - CODEBOOK.t().reshape(1, 2, 1, 3)) / 6, atol=1e-6)


def test_straight_through_gradient_is_identity():
    vq = _quantizer()
    z = Z.clone().requires_grad_(True)
    weights = torch.randn_like(Z)
    (vq(z).z_q * weights).sum().backward()
    assert torch.allclose(z.grad, weights)


def test_codebook_usage_by_hand():
    stats = codebook_usage(torch.tensor([0, 0, 1, 1]), 4)
    assert stats["perplexity"].item() == pytest.approx(2.0)
    assert stats["usage"].item() == pytest.approx(0.5)
    stats = codebook_usage(torch.tensor([[3, 3], [3, 3]]), 8)
    assert stats["perplexity"].item() == pytest.approx(1.0) and stats["usage"].item() == pytest.approx(1 / 8)


def test_ema_update_by_hand():
    """One EMA step with decay 0.5: count and sum move half-way, the code becomes their ratio."""
    vq = _quantizer(ema=True, ema_decay=0.5)
    assert not vq.embedding.weight.requires_grad
    vq.train()
    out = vq(Z)
    assert "codebook" not in out.losses
    assert torch.allclose(vq.ema_count, torch.tensor([1.0, 1.0, 1.0]))  # 0.5·1 + 0.5·1 each
    expect_sum = 0.5 * CODEBOOK + 0.5 * Z.reshape(2, 3).t()
    assert torch.allclose(vq.ema_sum, expect_sum)
    n = 3.0
    smoothed = (torch.ones(3) + 1e-5) / (n + 3e-5) * n
    assert torch.allclose(vq.embedding.weight, expect_sum / smoothed[:, None], atol=1e-6)


def test_dead_codes_are_restarted_to_encoder_outputs():
    vq = _quantizer(restart_dead_codes=True, dead_code_threshold=0.5, usage_decay=0.5)
    vq.embedding.weight.data[2] = torch.tensor([100.0, 100.0])  # never the nearest: dead
    z = Z[..., :2].clone()  # only codes 0 and 1 are ever used
    vq.train()
    for _ in range(2):
        vq(z)
    restarted = vq.embedding.weight.data[2]
    candidates = z.reshape(2, 2).t()
    assert any(torch.allclose(restarted, c) for c in candidates)


def test_kl_to_uniform_by_hand():
    assert kl_to_uniform(torch.zeros(2, 5, 1, 1)).item() == pytest.approx(0.0, abs=1e-7)
    logits = torch.tensor([math.log(3.0), 0.0]).reshape(1, 2, 1, 1)  # q = (0.75, 0.25)
    expect = 0.75 * math.log(0.75 * 2) + 0.25 * math.log(0.25 * 2)
    assert kl_to_uniform(logits).item() == pytest.approx(expect, rel=1e-6)


def test_batch_usage_deficit_by_hand():
    # K = 4 codes, [B=1, K, h=1, w=2]
    assert batch_usage_deficit(torch.zeros(1, 4, 1, 2)).item() == pytest.approx(0.0, abs=1e-6)
    confident = torch.full((1, 4, 1, 2), -30.0)
    confident[0, 0, 0, :] = 30.0  # both positions certain of code 0: the batch uses one code
    assert batch_usage_deficit(confident).item() == pytest.approx(1.0, abs=1e-5)
    confident[0, :, 0, 1] = -30.0
    confident[0, 3, 0, 1] = 30.0  # now codes 0 and 3: H(q̄) = log 2 = half of log 4
    assert batch_usage_deficit(confident).item() == pytest.approx(0.5, abs=1e-5)
    # the per-position KL cannot tell the two apart: both positions are certain either way
    assert kl_to_uniform(confident).item() == pytest.approx(math.log(4), abs=1e-5)


def test_dvae_usage_term_enters_the_loss():
    from vilgkit_vq.dvae import DVAETokenizer

    torch.manual_seed(0)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    plain = DVAETokenizer(**DVAETokenizer.conformance_args()).train()
    spread = DVAETokenizer(**DVAETokenizer.conformance_args(), usage_weight=0.5).train()
    spread.load_state_dict(plain.state_dict())
    torch.manual_seed(1)
    base = plain.loss(images)
    torch.manual_seed(1)
    out = spread.loss(images)
    assert "usage_deficit" not in base
    assert out["loss"].item() == pytest.approx(base["loss"].item() + 0.5 * out["usage_deficit"].item(), rel=1e-5)
    assert 0.0 < out["usage_deficit"].item() < 1.0
    with pytest.raises(ValueError, match="usage_weight"):
        DVAETokenizer(**DVAETokenizer.conformance_args(), usage_weight=-1.0)


def test_gumbel_temperature_schedule():
    assert gumbel_temperature(0, 1.0, 1 / 16, 100) == pytest.approx(1.0)
    assert gumbel_temperature(50, 1.0, 1 / 16, 100) == pytest.approx(0.25)
    assert gumbel_temperature(1000, 1.0, 1 / 16, 100) == pytest.approx(1 / 16)
    assert gumbel_temperature(5, 1.0, 0.5, 0) == pytest.approx(0.5)


def test_gan_losses_by_hand():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # relu(1 - real) = (0, 0.5) → 0.25; relu(1 + fake) = (0, 1) → 0.5; half the sum
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.375)
    expect = 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())
    assert vanilla_d_loss(real, fake).item() == pytest.approx(expect.item())


def test_adaptive_weight_is_grad_norm_ratio():
    last = torch.tensor([1.0, 2.0], requires_grad=True)
    a, b = torch.tensor([3.0, 4.0]), torch.tensor([0.0, 2.0])
    nll, g = (last * a).sum(), (last * b).sum()  # gradients a (norm 5) and b (norm 2)
    w = adaptive_weight(nll, g, last, scale=0.8)
    assert w.item() == pytest.approx(0.8 * 5.0 / (2.0 + 1e-4), rel=1e-6)
    assert not w.requires_grad


def test_gumbel_softmax_samples_the_softmax_and_straight_through_is_one_hot():
    from vilgkit_vq.quantizers import gumbel_softmax

    torch.manual_seed(0)
    probs = torch.tensor([0.7, 0.2, 0.1])
    logits = probs.log().expand(20000, 3).clone().requires_grad_(True)
    y = gumbel_softmax(logits, 1.0, hard=True)
    # Gumbel-max: the hard samples follow softmax(logits)
    assert torch.allclose(y.detach().mean(0), probs, atol=0.015)
    assert torch.equal(y.detach().sum(-1), torch.ones(20000)) and set(y.detach().unique().tolist()) == {0.0, 1.0}
    # straight-through: the gradient is the soft sample's
    (y * torch.tensor([1.0, -1.0, 0.5])).sum().backward()
    assert logits.grad.abs().sum() > 0
    soft = gumbel_softmax(torch.zeros(4, 5), 0.5)
    assert torch.allclose(soft.sum(-1), torch.ones(4)) and (soft > 0).all()


def test_edge_weighted_mse_by_hand():
    # one channel-triple image, 1 x 3 pixels: values [-1, 1, 1] in every channel
    target = torch.tensor([-1.0, 1.0, 1.0]).expand(1, 3, 1, 3).clone()
    recon = torch.zeros_like(target)
    # |∂x| = [2, 0, 0 (padding)], |∂y| = 0 → weights 1 + 0.5·[2, 0, 0] = [2, 1, 1]
    # squared errors [1, 1, 1] → weighted mean (2 + 1 + 1) / 3
    assert edge_weighted_mse(recon, target, 0.5).item() == pytest.approx(4 / 3)
    assert edge_weighted_mse(recon, target, 0.0).item() == pytest.approx(1.0)
    # the weight is a constant: the gradient flows to the reconstruction only, scaled per pixel
    recon.requires_grad_(True)
    edge_weighted_mse(recon, target, 0.5).backward()
    expected = torch.tensor([2.0, 1.0, 1.0]) * 2 * (0 - torch.tensor([-1.0, 1.0, 1.0])) / 9
    assert torch.allclose(recon.grad[0, 0, 0], expected)


def test_vqvae_edge_weight_needs_mse():
    with pytest.raises(ValueError, match="edge_weight"):
        VQVAETokenizer(codebook_size=8, code_dim=4, downsample=4, hidden=8, rec_loss="l1", edge_weight=1.0)


def test_gumbel_noise_scale_zero_is_the_argmax_and_one_is_unchanged():
    from vilgkit_vq.quantizers import gumbel_softmax

    torch.manual_seed(0)
    logits = torch.randn(500, 7, requires_grad=True)
    hard = gumbel_softmax(logits, 0.5, hard=True, noise_scale=0.0)
    assert torch.equal(hard.detach().argmax(-1), logits.detach().argmax(-1))  # no noise: the inference code
    soft = gumbel_softmax(logits, 0.5, noise_scale=0.0)
    assert torch.allclose(soft, (logits / 0.5).softmax(-1))
    (hard * torch.arange(7.0)).sum().backward()  # straight-through gradient still flows
    assert logits.grad.abs().sum() > 0
    # scale 1: the same draws as before the option existed (-log(-log U) from one rand call)
    torch.manual_seed(3)
    y = gumbel_softmax(logits.detach(), 0.5, noise_scale=1.0)
    torch.manual_seed(3)
    u = torch.rand(500, 7).clamp_min(torch.finfo(torch.float32).tiny)
    assert torch.allclose(y, ((logits.detach() - torch.log(-torch.log(u))) / 0.5).softmax(-1), atol=1e-6)
    # a half scale: half the noise
    torch.manual_seed(3)
    y = gumbel_softmax(logits.detach(), 0.5, noise_scale=0.5)
    assert torch.allclose(y, ((logits.detach() - 0.5 * torch.log(-torch.log(u))) / 0.5).softmax(-1), atol=1e-6)
    with pytest.raises(ValueError, match="noise_scale"):
        gumbel_softmax(logits, 0.5, noise_scale=-0.1)


def test_dvae_noise_schedule_and_argmax_training_codes():
    from vilgkit_vq.dvae import DVAETokenizer

    args = DVAETokenizer.conformance_args()
    tok = DVAETokenizer(**args, straight_through=True, noise_end=0.0, noise_anneal_start=10, noise_anneal_steps=20)
    assert [tok.noise_scale(s) for s in (0, 10, 20, 30, 99)] == pytest.approx([1.0, 1.0, 0.5, 0.0, 0.0])
    assert DVAETokenizer(**args).noise_scale(10**6) == 1.0  # default: DALL-E's sampling throughout
    assert DVAETokenizer(**args, noise_end=0.2, noise_anneal_start=5).noise_scale(5) == pytest.approx(0.2)
    # at scale 0 the training embedding is the codebook row of the argmax code, as at inference
    tok.train()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    out = tok(x, "main", 40)
    assert out["noise_scale"].item() == 0.0
    logits = tok.logits(x)
    z = tok.relaxed_embedding(logits, tok.temperature())
    assert torch.allclose(z, tok.embed(logits.argmax(1)), atol=1e-6)
    for bad in ({"noise_end": 1.5}, {"noise_anneal_start": -1}, {"noise_anneal_steps": -2}):
        with pytest.raises(ValueError, match="noise_end"):
            DVAETokenizer(**args, **bad)
