"""The Trainer in-process: known loss, accumulation, groups, non-finite policy, bf16, clipping,
callbacks, logs, exact resume after an interruption."""

import json

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook
from vilgkit_engine_toy import NOISE, ToyRegression, ToyRegressionData

from vilgkit.engine.checkpoint import load_tensors
from vilgkit.engine.config import TrainerConfig
from vilgkit.engine.trainer import NonFiniteLossError, Trainer
from vilgkit.errors import VilgkitError
from vilgkit.interfaces import Trainable
from vilgkit_parallel.single import SingleDevice


def fit(module, out, data=None, resume=False, callbacks=(), tb=False, **cfg):
    cfg = {"steps": 20, "batch_size": 16, "lr": 0.05, "warmup_steps": 2, "log_every": 5, **cfg}
    trainer = Trainer(
        module,
        data or ToyRegressionData(128),
        out,
        SingleDevice("cpu"),
        TrainerConfig(**cfg),
        callbacks=callbacks,
        progress=False,
        tensorboard=tb,
    )
    return trainer, trainer.fit(resume=resume)


def weights(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_linear_regression_reaches_the_noise_floor(tmp_path):
    data = ToyRegressionData(256, dim=4)
    module = ToyRegression(4)
    _, metrics = fit(module, tmp_path, data, steps=150, batch_size=32, weight_decay=0.0, lr=0.05)
    with torch.no_grad():
        mse = torch.mean((module({"x": data.x}) - data.y) ** 2).item()
    assert NOISE**2 * 0.7 < mse < NOISE**2 * 1.3, mse  # the optimum is the noise variance
    assert torch.allclose(module.net.weight[0], data.w, atol=0.03)
    assert metrics["step"] == 150 and metrics["samples"] == 150 * 32
    exported = load_tensors(tmp_path / "model.safetensors")
    assert torch.equal(exported["net.weight"], module.net.weight.detach())


def test_accumulation_matches_one_big_batch(tmp_path):
    torch.manual_seed(0)
    a = ToyRegression(4, hidden=8)
    b = ToyRegression(4, hidden=8)
    b.load_state_dict(a.state_dict())
    fit(a, tmp_path / "a", steps=6, batch_size=16, grad_accum=1)
    fit(b, tmp_path / "b", steps=6, batch_size=8, grad_accum=2)  # the same 16 samples per step
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-5), name


class TwoGroups(nn.Module, Trainable):
    """Group "gen" then "disc"; each loss also reaches the other's parameters (as in a GAN)."""

    def __init__(self):
        super().__init__()
        self.gen, self.disc = nn.Linear(4, 4), nn.Linear(4, 1)
        self.calls, self.grads_seen = [], []

    def optimizer_groups(self):
        return {"gen": list(self.gen.parameters()), "disc": {"params": list(self.disc.parameters()), "lr": 1e-3}}

    def forward(self, batch, group="gen", step=0):
        self.calls.append((group, step))
        # the gradients at entry must be clean: the other group's backward must not leak in
        self.grads_seen.append(all(p.grad is None for p in self.parameters()))
        out = self.disc(self.gen(batch["x"])).squeeze(-1)
        loss = ((out - batch["y"]) ** 2).mean() if group == "gen" else (out**2).mean()
        return {"loss": loss}


def test_groups_step_in_order_with_their_own_settings(tmp_path):
    module = TwoGroups()
    trainer, metrics = fit(module, tmp_path, steps=3, grad_accum=2, log_every=1)
    assert (
        module.calls
        == [("gen", 0)] * 2
        + [("disc", 0)] * 2
        + [("gen", 1)] * 2
        + [("disc", 1)] * 2
        + [("gen", 2)] * 2
        + [("disc", 2)] * 2
    )
    assert module.grads_seen[0] and module.grads_seen[2]  # first micro-batch of each group starts clean
    assert set(metrics) >= {"gen/loss", "disc/loss", "lr/gen", "lr/disc", "loss"}
    assert trainer.optimizers["disc"].param_groups[0]["initial_lr"] == 1e-3


class InfGrad(torch.autograd.Function):
    """Zero in the forward pass, an infinite gradient in the backward pass."""

    @staticmethod
    def forward(ctx, x):
        return torch.zeros_like(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("inf"))


class Exploding(ToyRegression):
    def __init__(self, bad_steps, mode="loss"):
        super().__init__(4)
        self.bad_steps, self.mode, self.snapshot = set(bad_steps), mode, None

    def training_losses(self, outputs, batch, group, step):
        out = super().training_losses(outputs, batch, group, step)
        if step in self.bad_steps:
            self.snapshot = weights(self)
            if self.mode == "loss":
                out["loss"] = out["loss"] * float("nan")
            else:  # finite loss, infinite gradient
                out["loss"] = out["loss"] + InfGrad.apply(self.net.bias).sum()
        return out


def test_non_finite_loss_stops_before_any_update(tmp_path):
    module = Exploding({3})
    with pytest.raises(
        NonFiniteLossError,
        match=r"step 3 \(0-based\), optimizer group 'main': non-finite loss nan "
        r"in micro-batch 0; batch samples \[\d+(, \d+)*\]",
    ):
        fit(module, tmp_path, steps=10)
    for name, value in weights(module).items():
        assert torch.equal(value, module.snapshot[name]), name


def test_skip_policy_counts_and_gives_up(tmp_path):
    module = Exploding({2, 5}, mode="grad")
    with pytest.warns(UserWarning, match="gradient norm"):
        _, metrics = fit(module, tmp_path / "a", steps=8, nonfinite="skip", max_skipped=3, log_every=1)
    assert metrics["skipped_steps"] == 2
    assert all(torch.isfinite(v).all() for v in module.state_dict().values())
    with pytest.raises(NonFiniteLossError, match="more than max_skipped=1"), pytest.warns(UserWarning):
        fit(Exploding({1, 2}), tmp_path / "b", steps=8, nonfinite="skip", max_skipped=1)


def test_bf16_autocast_and_clipping(tmp_path):
    seen, norms = [], []

    class Probe(ToyRegression):
        def forward(self, batch, group="main", step=0):
            seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
            return super().forward(batch, group, step)

    def hook(opt, args, kwargs):
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])).item())

    handle = register_optimizer_step_pre_hook(hook)
    try:
        _, metrics = fit(Probe(4), tmp_path, steps=5, precision="bf16", grad_clip=0.01, log_every=1)
    finally:
        handle.remove()
    assert seen and all(seen)
    assert len(norms) == 5 and max(norms) <= 0.01 * 1.001
    assert metrics["grad_norm"] > 0.01  # the logged norm is the one before clipping


class Sampler:
    every = 4

    def __init__(self):
        self.calls = []

    def __call__(self, step, module, out_dir):
        self.calls.append((step, module.training, torch.is_grad_enabled()))
        torch.randn(100)  # draws numbers: must not change the training
        (out_dir / f"sample_{step}.txt").write_text("ok")


def test_callbacks_are_periodic_and_rng_neutral(tmp_path):
    torch.manual_seed(0)
    a = ToyRegression(4, hidden=8, dropout=0.5)
    b = ToyRegression(4, hidden=8, dropout=0.5)
    b.load_state_dict(a.state_dict())
    sampler = Sampler()
    fit(a, tmp_path / "a", steps=9, callbacks=[sampler])
    fit(b, tmp_path / "b", steps=9)
    assert sampler.calls == [(4, False, False), (8, False, False)]
    assert (tmp_path / "a" / "sample_8.txt").is_file()
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)


def test_held_out_evaluation(tmp_path):
    held_out = ToyRegressionData(64, seed=1)
    module = ToyRegression(4, hidden=8, dropout=0.5)
    trainer = Trainer(
        module,
        ToyRegressionData(128),
        tmp_path,
        SingleDevice("cpu"),
        TrainerConfig(steps=6, batch_size=16, log_every=3),
        eval_dataset=held_out,
        eval_every=3,
        eval_batches=2,
        progress=False,
        tensorboard=False,
    )
    metrics = trainer.fit()
    with torch.no_grad():
        module.eval()
        expected = (
            sum(
                torch.mean((module({"x": held_out.x[i : i + 16]}) - held_out.y[i : i + 16]) ** 2).item()
                for i in (0, 16)
            )
            / 2
        )
    assert metrics["val/mse"] == pytest.approx(expected, rel=1e-6)
    assert metrics["val/training"] == 0.0  # evaluated in eval mode
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [3, 6] and all("val/mse" in x and "loss" in x for x in lines)


def test_metrics_jsonl_and_tensorboard(tmp_path):
    fit(ToyRegression(4), tmp_path, steps=10, log_every=5, tb=True)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [5, 10]
    assert {"loss", "mae", "lr", "grad_norm", "samples_per_s", "epoch", "skipped_steps"} <= set(lines[0])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [5, 10]
    assert events.Scalars("loss")[1].value == pytest.approx(lines[1]["loss"])


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_exact_resume_after_an_interruption(tmp_path, optimizer):
    torch.manual_seed(0)
    init = ToyRegression(4, hidden=8, dropout=0.3).state_dict()
    common = dict(steps=17, checkpoint_every=5, log_every=1, grad_accum=2, batch_size=12, optimizer=optimizer)
    ref = ToyRegression(4, hidden=8, dropout=0.3)
    ref.load_state_dict(init)
    fit(ref, tmp_path / "ref", **common)

    class Crash:
        every = 13

        def __call__(self, step, module, out_dir):
            raise Interrupt

    first = ToyRegression(4, hidden=8, dropout=0.3)
    first.load_state_dict(init)
    with pytest.raises(Interrupt):
        fit(first, tmp_path / "run", callbacks=[Crash()], **common)
    with pytest.raises(VilgkitError, match="already has checkpoints .*step 10.*--resume"):
        fit(ToyRegression(4, hidden=8, dropout=0.3), tmp_path / "run", **common)
    resumed = ToyRegression(4, hidden=8, dropout=0.3)  # fresh init: everything comes from the checkpoint
    _, metrics = fit(resumed, tmp_path / "run", resume=True, **common)
    for (name, x), y in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(x, y), name
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 18))  # lines 11-13 of the interrupted run were replaced
    assert metrics["step"] == 17
    # resuming a finished stage is a no-op that returns its metrics
    _, again = fit(ToyRegression(4, hidden=8, dropout=0.3), tmp_path / "run", resume=True, **common)
    assert again["loss"] == metrics["loss"]


def test_bad_config_and_module(tmp_path):
    with pytest.raises(VilgkitError, match="grad_accum must be >= 1"):
        fit(ToyRegression(4), tmp_path, grad_accum=0)
    with pytest.raises(VilgkitError, match="group_by_length must be >= 0"):
        fit(ToyRegression(4), tmp_path, group_by_length=-1)
    with pytest.raises(ValueError, match="group_by_length needs a map-style data set with sample_lengths"):
        fit(ToyRegression(4), tmp_path, group_by_length=4)  # the toy data has no lengths
    with pytest.raises(TypeError, match="implementing Trainable"):
        Trainer(nn.Linear(2, 2), ToyRegressionData(8), tmp_path, SingleDevice("cpu"), TrainerConfig())
    with pytest.raises(ValueError, match="CUDA is not available|got 'tpu'"):
        SingleDevice("tpu")


def test_plain_progress_lines_when_not_a_terminal(tmp_path, capsys):
    trainer = Trainer(
        ToyRegression(4),
        ToyRegressionData(64),
        tmp_path,
        SingleDevice("cpu"),
        TrainerConfig(steps=4, batch_size=8, log_every=2),
        tensorboard=False,
        stage_name="toy",
    )
    trainer.fit()
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("toy step")]
    assert len(lines) == 2 and lines[1].startswith("toy step 4/4 ")
    for field in ("loss=", "lr=", "samples_per_s=", "eta "):
        assert field in lines[0], lines[0]
