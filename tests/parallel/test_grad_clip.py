"""Gradient clipping goes through the strategy: a wrapper that clips itself (FairScale's FSDP,
PyTorch's FSDP1) is asked, and its norm is the one the trainer checks and logs; plain modules, DDP and
FSDP2 keep ``torch.nn.utils.clip_grad_norm_``. CPU only, in-process."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from vilgkit.engine.config import TrainerConfig
from vilgkit.engine.trainer import Trainer
from vilgkit.interfaces import ParallelStrategy, Trainable
from vilgkit_parallel.fairscale_fsdp import FairScaleFSDP
from vilgkit_parallel.single import SingleDevice

REPORTED = 7.25  # what the fake wrapper says the global norm is (no local computation gives it)


class Regression(nn.Module, Trainable):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(3, 1)

    def optimizer_groups(self):
        return {"main": list(self.parameters())}

    def forward(self, batch, group="main", step=0):
        return {"loss": ((self.net(batch["x"]).squeeze(-1) - batch["y"]) ** 2).mean()}


class SelfClipping(nn.Module):
    """Stands for a sharded wrapper: its class defines ``clip_grad_norm_(max_norm)``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[float] = []

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        assert all(p.grad is not None for p in self.inner.parameters())  # called after backward
        self.calls.append(max_norm)
        return torch.tensor(REPORTED)


class WrappingSingle(SingleDevice):
    def wrap(self, model: nn.Module) -> nn.Module:
        self.wrapper = SelfClipping(super().wrap(model))
        return self.wrapper


def _data(n: int = 16) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    return [{"x": x[i], "y": x[i].sum()} for i in range(n)]


def _fit(tmp_path, strategy, grad_clip: float):
    cfg = TrainerConfig(steps=2, batch_size=4, lr=0.01, warmup_steps=0, log_every=1, grad_clip=grad_clip)
    trainer = Trainer(Regression(), _data(), tmp_path, strategy, cfg, progress=False, tensorboard=False)
    trainer.fit()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return [line["grad_norm"] for line in lines if "grad_norm" in line]


@pytest.mark.parametrize("grad_clip,expected_max", [(0.5, 0.5), (0.0, math.inf)])
def test_trainer_asks_a_self_clipping_wrapper_and_logs_its_norm(tmp_path, monkeypatch, grad_clip, expected_max):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.nn.utils.clip_grad_norm_ used on a wrapper that clips itself")

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", refuse)
    strategy = WrappingSingle("cpu")
    norms = _fit(tmp_path, strategy, grad_clip)
    assert strategy.wrapper.calls == [expected_max, expected_max]  # once per step, with the config's limit
    assert norms == [REPORTED, REPORTED]


def test_plain_modules_keep_the_torch_function(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    model(torch.randn(8, 4)).pow(2).sum().backward()
    expected = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]))
    norm = SingleDevice("cpu").clip_grad_norm_(model, list(model.parameters()), 1e-3)
    assert norm.item() == pytest.approx(expected.item(), rel=1e-6)
    clipped = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert clipped.item() == pytest.approx(1e-3, rel=1e-3)
    assert ParallelStrategy.clip_grad_norm_ is SingleDevice.clip_grad_norm_  # the interface's default


def test_fairscale_clip_keeps_only_the_groups_gradients():
    """FairScale's clip covers every gradient of the module: the other group's are dropped first."""

    class FakeRoot(SelfClipping):
        def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
            self.calls.append(max_norm)
            return torch.linalg.vector_norm(
                torch.cat([p.grad.flatten() for p in self.parameters() if p.grad is not None])
            )

    gen, disc = nn.Linear(2, 2), nn.Linear(2, 1)
    root = FakeRoot(nn.Sequential(gen, disc))
    root(torch.ones(1, 2)).sum().backward()  # the loss reaches both groups' parameters
    strategy = object.__new__(FairScaleFSDP)  # its constructor refuses a machine without CUDA
    strategy._root_params = []  # set by wrap
    norm = strategy.clip_grad_norm_(root, list(gen.parameters()), 2.0)
    assert root.calls == [2.0]
    assert all(p.grad is None for p in disc.parameters()) and all(p.grad is not None for p in gen.parameters())
    assert norm.item() == pytest.approx(
        torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in gen.parameters()])).item()
    )
