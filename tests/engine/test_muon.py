"""``optimizer: muon``: Muon on hidden matrices + AdamW on the rest, as one optimizer."""

import io

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from vilgkit_engine_toy import NOISE, ToyRegression, ToyRegressionData

from vilgkit.engine.config import TrainerConfig
from vilgkit.engine.muon import MuonAdamW, muon_param_groups
from vilgkit.engine.trainer import Trainer
from vilgkit.errors import VilgkitError
from vilgkit.testing.tiny import tiny_generator
from vilgkit_parallel.single import SingleDevice


def _tiny_generator():
    return tiny_generator(text_vocab_size=32, image_vocab_size=16, num_heads=4, max_text_len=8, max_image_grid=2)


def test_hidden_matrices_go_to_muon_and_the_rest_to_adamw():
    model = _tiny_generator()
    groups = muon_param_groups(model, list(model.parameters()), weight_decay=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for g in groups if g["use_muon"] for p in g["params"]}
    expected = {f"layers.{i}.{w}.weight" for i in range(2) for w in ("qkv", "proj", "mlp.fc1", "mlp.fc2")}
    assert muon == expected
    adam = {names[id(p)] for g in groups if not g["use_muon"] for p in g["params"]}
    assert {"text_head.weight", "image_head.weight", "text_embed.weight", "layers.0.ln1.weight"} <= adam
    assert muon.isdisjoint(adam) and len(muon) + len(adam) == len(names)
    decays = {g["use_muon"]: g["weight_decay"] for g in groups if g["weight_decay"] > 0}
    assert decays == {True: 0.1, False: 0.1}  # heads decay on AdamW; norms/embeddings do not


def _mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 3))


def _loss(model, step):
    g = torch.Generator().manual_seed(step)
    x, y = torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)
    return ((model(x) - y) ** 2).mean()


def _schedule(step):
    return 0.5 + 0.25 * step  # not constant: the scheduler must reach both parts


def test_one_step_equals_torch_muon_and_adamw_side_by_side():
    a, b = _mlp(), _mlp()
    ours = MuonAdamW(muon_param_groups(a, list(a.parameters()), 0.05), lr=0.01, betas=(0.9, 0.95))
    sched = LambdaLR(ours, _schedule)
    # reference: the two torch optimizers, separately, on the same split (both weights → Muon)
    ref_muon = torch.optim.Muon([b[0].weight, b[2].weight], lr=0.01, weight_decay=0.05, adjust_lr_fn="match_rms_adamw")
    ref_adam = torch.optim.AdamW([b[0].bias, b[2].bias], lr=0.01, betas=(0.9, 0.95), weight_decay=0.0)
    ref_sched = [LambdaLR(o, _schedule) for o in (ref_muon, ref_adam)]
    for step in range(4):
        for model, opts in ((a, [ours]), (b, [ref_muon, ref_adam])):
            for o in opts:
                o.zero_grad()
            _loss(model, step).backward()
            for o in opts:
                o.step()
        sched.step()
        for s in ref_sched:
            s.step()
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(x, y), name
    assert not torch.equal(a[0].weight, _mlp()[0].weight)


def test_state_dict_round_trips_through_weights_only_load():
    a = _mlp()
    opt = MuonAdamW(muon_param_groups(a, list(a.parameters()), 0.0), lr=0.01, betas=(0.9, 0.95))
    for step in range(2):
        opt.zero_grad()
        _loss(a, step).backward()
        opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    b = _mlp()
    b.load_state_dict(a.state_dict())
    restored = MuonAdamW(muon_param_groups(b, list(b.parameters()), 0.0), lr=0.01, betas=(0.9, 0.95))
    restored.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    for model, o in ((a, opt), (b, restored)):  # a third step from the same state
        o.zero_grad()
        _loss(model, 2).backward()
        o.step()
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(x, y), name
    assert restored.state[b[0].weight]["momentum_buffer"].abs().sum() > 0  # Muon's state came back
    assert "exp_avg" in restored.state[b[0].bias]  # and AdamW's


def test_rejects_non_matrices_in_a_muon_group():
    bias = nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="2-D matrices only"):
        MuonAdamW([{"params": [bias], "weight_decay": 0.0, "use_muon": True}], lr=0.01, betas=(0.9, 0.95))


def test_trainer_with_muon_learns_and_validates_the_name(tmp_path):
    torch.manual_seed(0)
    model = ToyRegression(4, hidden=16)
    data = ToyRegressionData(256, dim=4)
    cfg = TrainerConfig(
        steps=150, batch_size=32, lr=0.05, warmup_steps=5, weight_decay=0.0, optimizer="muon", log_every=50
    )
    trainer = Trainer(model, data, tmp_path / "ok", SingleDevice("cpu"), cfg, progress=False, tensorboard=False)
    trainer.fit()
    assert isinstance(trainer.optimizers["main"], MuonAdamW)
    with torch.no_grad():
        after = torch.mean((model({"x": data.x}) - data.y) ** 2).item()
    assert after < 2 * NOISE**2, after  # near the optimum (the noise variance), as AdamW gets in 150 steps
    with pytest.raises(VilgkitError, match="optimizer must be 'adamw' or 'muon', got 'sgd'"):
        Trainer(
            ToyRegression(4),
            data,
            tmp_path / "bad",
            SingleDevice("cpu"),
            TrainerConfig(optimizer="sgd"),
            progress=False,
            tensorboard=False,
        ).fit()


def test_refused_under_a_sharding_strategy(tmp_path):
    from vilgkit.interfaces import StrategyLayout

    class Sharding(SingleDevice):
        def layout(self):
            return StrategyLayout(sharding="full")

    with pytest.raises(VilgkitError, match="optimizer: muon needs whole weight matrices.*Sharding shards them"):
        Trainer(
            ToyRegression(4),
            ToyRegressionData(8),
            tmp_path,
            Sharding("cpu"),
            TrainerConfig(optimizer="muon"),
            progress=False,
            tensorboard=False,
        )


def test_untagged_groups_are_adamw_before_and_after_loading():
    a = _mlp()
    groups = [
        {"params": [a[0].weight], "weight_decay": 0.0, "use_muon": True},
        {"params": [a[0].bias, a[2].weight, a[2].bias], "weight_decay": 0.0},
    ]  # no tag: AdamW
    opt = MuonAdamW(groups, lr=0.01, betas=(0.9, 0.95))
    _loss(a, 0).backward()
    opt.step()
    opt.load_state_dict(opt.state_dict())
    assert [len(g["params"]) for g in opt._adamw.param_groups] == [3]
    assert "exp_avg" in opt.state[a[2].weight] and "momentum_buffer" in opt.state[a[0].weight]


def _same_shapes_mlp():
    torch.manual_seed(2)  # weights 24×24, 24×24, 48×24 and 24×48: the last two share the oriented shape 24×48
    return nn.Sequential(
        nn.Linear(6, 24),
        nn.GELU(),
        nn.Linear(24, 24),
        nn.GELU(),
        nn.Linear(24, 24),
        nn.GELU(),
        nn.Linear(24, 48),
        nn.GELU(),
        nn.Linear(48, 24),
        nn.GELU(),
        nn.Linear(24, 3),
    )


def test_batched_newton_schulz_matches_torch_muon_matrix_by_matrix():
    a, b = _same_shapes_mlp(), _same_shapes_mlp()
    hidden = [2, 4, 6, 8]
    ours = MuonAdamW(
        [{"params": [a[i].weight for i in hidden], "weight_decay": 0.05, "use_muon": True}], lr=0.02, betas=(0.9, 0.95)
    )
    ref = torch.optim.Muon([b[i].weight for i in hidden], lr=0.02, weight_decay=0.05, adjust_lr_fn="match_rms_adamw")
    start = [a[i].weight.detach().clone() for i in hidden]
    for step in range(3):
        for model, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            _loss(model, step).backward()
            opt.step()
    for i, w0 in zip(hidden, start):
        moved = (a[i].weight - w0).abs().max().item()
        gap = (a[i].weight - b[i].weight).abs().max().item()
        # bf16 matmuls batched or one by one round differently; the update itself is the same
        assert gap < 0.02 * moved, (i, gap, moved)
        assert torch.allclose(
            ours.state[a[i].weight]["momentum_buffer"], ref.state[b[i].weight]["momentum_buffer"], rtol=0.05, atol=1e-4
        )
