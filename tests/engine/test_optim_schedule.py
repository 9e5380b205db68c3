"""Weight-decay split, AdamW groups and the warm-up + cosine schedule."""

import math

import pytest
import torch
from torch import nn

from vilgkit.engine.optim import adamw_param_groups, no_decay_parameter_names, normalize_groups
from vilgkit.engine.schedule import build_scheduler, warmup_cosine


class CustomNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, 4, 1))  # 3-D, but owned by a *Norm class


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(10, 4)
        self.pos = nn.Parameter(torch.zeros(1, 3, 4))  # listed in no_weight_decay()
        self.proj = nn.Linear(4, 4)
        self.ln = nn.LayerNorm(4)
        self.conv = nn.Conv2d(4, 4, 3)
        self.norm = CustomNorm()
        self.logit_scale = nn.Parameter(torch.tensor(1.0))

    def no_weight_decay(self):
        return {"pos"}


def test_no_decay_on_norms_biases_embeddings():
    names = no_decay_parameter_names(Net())
    assert names == {"tok.weight", "pos", "proj.bias", "ln.weight", "ln.bias", "conv.bias", "norm.scale", "logit_scale"}


def test_adamw_leaves_no_decay_parameters_alone():
    net = Net()
    params = list(net.parameters())
    groups = adamw_param_groups(net, params, weight_decay=0.5)
    assert [g["weight_decay"] for g in groups] == [0.5, 0.0]
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = torch.optim.AdamW(groups, lr=0.1)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradients: only decay moves a parameter
    for name, p in net.named_parameters():
        moved = not torch.equal(p, before[name])
        assert moved == (name in {"proj.weight", "conv.weight"}), name


def test_group_normalisation_errors():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    with pytest.raises(ValueError, match="no groups"):
        normalize_groups({})
    with pytest.raises(ValueError, match="both optimizer groups"):
        normalize_groups({"x": list(a.parameters()), "y": list(a.parameters())})
    with pytest.raises(ValueError, match="unknown override"):
        normalize_groups({"x": {"params": list(a.parameters()), "momentum": 0.9}})
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        normalize_groups({"x": list(frozen.parameters())})
    out = normalize_groups({"x": list(a.parameters()), "y": {"params": list(b.parameters()), "lr": 1e-4}})
    assert list(out) == ["x", "y"] and out["y"]["lr"] == 1e-4


def test_warmup_cosine_values():
    f = lambda s: warmup_cosine(s, warmup_steps=4, total_steps=14, min_lr_ratio=0.1)  # noqa: E731
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(4, 20))
    assert warmup_cosine(0, warmup_steps=0, total_steps=10, min_lr_ratio=0.0) == 1.0


def test_scheduler_drives_the_optimizer_and_round_trips():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=2.0)
    sched = build_scheduler(opt, warmup_steps=2, total_steps=6, min_lr_ratio=0.0)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == [1.0, 2.0, 2.0] and lrs[-1] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 3 / 4)))
    import json

    state = json.loads(json.dumps(sched.state_dict()))  # plain data only
    fresh = build_scheduler(torch.optim.AdamW([p], lr=2.0), warmup_steps=2, total_steps=6, min_lr_ratio=0.0)
    fresh.load_state_dict(state)
    assert fresh.last_epoch == 6
    with pytest.raises(ValueError):
        build_scheduler(opt, warmup_steps=-1, total_steps=5, min_lr_ratio=0.1)
