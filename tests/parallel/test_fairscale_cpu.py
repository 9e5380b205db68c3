"""What of ``FairScaleFSDP`` can be checked without CUDA (FairScale's forward needs CUDA streams):
the constructor arguments for bf16 / fp32, that FairScale 0.4.13 accepts them, how ``wrap`` hooks
the root, the autograd ordering behind the ``_use_full_params`` assertion, how root parameters that
a loss never reaches get their (zero, then dropped) gradients, and the bf16 accumulation refusal.
The GPU runs are recorded in docs/distributed.md, FairScale section."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from vilgkit.errors import RecipeError
from vilgkit_parallel import distributed as D
from vilgkit_parallel.fairscale_fsdp import (
    BF16_ACCUM,
    FairScaleFSDP,
    cast_floats,
    check_recipe,
    detach_side_outputs,
    fsdp_kwargs,
)

fairscale = pytest.importorskip("fairscale")


@pytest.mark.parametrize("dtype,mixed,compute", [("bf16", True, torch.bfloat16), ("fp32", False, torch.float32)])
def test_kwargs(dtype, mixed, compute):
    kw = fsdp_kwargs(dtype, offload=True, device=torch.device("cuda", 1))
    assert kw["mixed_precision"] is mixed and kw["compute_dtype"] is compute
    assert kw["buffer_dtype"] is torch.float32  # never FairScale's default (the compute dtype)
    assert kw["fp32_reduce_scatter"] is mixed  # FairScale refuses it without mixed precision
    assert kw["flatten_parameters"] is False  # parameter identity: optimizer groups and clipping
    assert kw["move_params_to_cpu"] and kw["move_grads_to_cpu"] and kw["compute_device"] == torch.device("cuda", 1)
    assert not fsdp_kwargs(dtype, offload=False, device="cuda")["move_params_to_cpu"]
    with pytest.raises(ValueError, match="compute_dtype"):
        fsdp_kwargs("fp16", True, "cuda")


def test_cast_floats_and_fairscales_own_cast():
    from fairscale.nn.data_parallel.fully_sharded_data_parallel import cast_floats_to_right_precision

    batch = {
        "image": torch.rand(2, 3),
        "ids": torch.arange(3),
        "half": torch.zeros(1, dtype=torch.float16),
        "list": [torch.ones(1)],
        "name": "x",
    }
    cast = cast_floats(batch, torch.bfloat16)
    assert cast["image"].dtype == torch.bfloat16 and cast["list"][0].dtype == torch.bfloat16
    assert cast["ids"].dtype == torch.int64 and cast["half"].dtype == torch.float16 and cast["name"] == "x"
    # the bug: FairScale's root casts fp32 inputs to fp16 whatever compute_dtype is...
    (raw,), _ = cast_floats_to_right_precision(True, True, batch)
    assert raw["image"].dtype == torch.float16
    # ...and leaves the already-cast bf16 ones alone
    (ours,), _ = cast_floats_to_right_precision(True, True, cast)
    assert ours["image"].dtype == torch.bfloat16


def test_detach_side_outputs():
    w = torch.ones(2, requires_grad=True)
    out = detach_side_outputs({"loss": w.sum(), "rec": w.mean(), "steps": 3})
    assert out["loss"].requires_grad and not out["rec"].requires_grad and out["steps"] == 3
    other = (w.sum(), w.mean())
    assert detach_side_outputs(other) is other  # not a training-loss dict: untouched


def _hook_order(outputs_of) -> list[str]:
    """Order of events in one backward: FairScale-style pre-backward hooks on the outputs that need a
    gradient, and post-backward hooks on each parameter's AccumulateGrad node (as FairScale does)."""
    torch.manual_seed(0)
    encoder, decoder = nn.Linear(4, 4), nn.Linear(4, 4)
    events: list[str] = []
    keep = []
    for name, p in [("encoder", encoder.weight), ("decoder", decoder.weight)]:
        acc = p.expand_as(p).grad_fn.next_functions[0][0]
        acc.register_hook(lambda *_, name=name: events.append(f"post:{name}"))
        keep.append(acc)
    x = torch.randn(8, 4)
    z = encoder(x)
    commit = (z - z.detach().round()).pow(2).mean()  # computed first, as a VQ commitment loss
    rec = (decoder(z) - x).pow(2).mean()  # computed last
    out = outputs_of({"loss": rec + commit, "rec": rec, "commit": commit})
    for key, value in out.items():
        if isinstance(value, torch.Tensor) and value.requires_grad:
            value.register_hook(lambda g, key=key: events.append(f"pre:{key}") or g)
    out["loss"].backward()
    return events


def test_a_late_pre_backward_hook_is_what_asserts_and_detaching_removes_it():
    """The root's pre-backward hook calls ``_use_full_params`` (the root keeps its parameters after
    forward), which asserts ``has_full_params``; a post-backward hook of any root parameter clears
    that flag. With the VQ-VAE's loss dict, the commitment loss's hook fires after the decoder's
    post-backward hook: the AssertionError seen on the GPU. Detached side outputs leave one hook,
    which fires before any parameter's."""
    events = _hook_order(lambda out: out)
    assert events.index("post:decoder") < events.index("pre:commit")  # the failing order
    events = _hook_order(detach_side_outputs)
    pre = [e for e in events if e.startswith("pre:")]
    assert pre == ["pre:loss"] and events[0] == "pre:loss"


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 4)
        self.layers = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
        self.head = nn.Linear(4, 2)  # a root parameter the test's losses leave unused
        self.register_buffer("usage", torch.zeros(4))

    def blocks(self):
        return list(self.layers)

    def forward(self, batch, step):
        h = self.embed(batch["x"])
        for layer in self.layers:
            h = layer(h)
        return {"loss": h.pow(2).mean(), "aux": h.abs().mean()}


@pytest.fixture()
def one_process_group():
    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _cpu_strategy(dtype: str = "fp32") -> FairScaleFSDP:
    strategy = object.__new__(FairScaleFSDP)  # the constructor refuses a machine without CUDA
    strategy.__dict__.update(
        _env=D.launch_env(),
        device=torch.device("cpu"),
        timeout_s=60.0,
        _ready=False,
        offload=False,
        compute_dtype=dtype,
        activation_checkpointing="none",
        _wrapped=None,
        _root_params=[],
    )
    return strategy


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_wrap_on_cpu_builds_fairscale_wrappers_and_hooks(one_process_group, dtype):
    from fairscale.nn.data_parallel import FullyShardedDataParallel

    strategy = _cpu_strategy(dtype)
    model = Toy()
    params = list(model.parameters())
    root = strategy.wrap(model)
    assert isinstance(root, FullyShardedDataParallel) and all(
        isinstance(b, FullyShardedDataParallel) for b in model.layers
    )
    assert [id(p) for p in root.parameters()] == [id(p) for p in params]  # sharded in place, same objects
    expected = torch.bfloat16 if dtype == "bf16" else torch.float32
    assert (
        root.compute_dtype is expected
        and root.buffer_dtype is torch.float32
        and root.mixed_precision is (dtype == "bf16")
    )
    # the root's input cast (bf16 only) runs before FairScale's forward
    args, kwargs = ({"x": torch.rand(2, 3)}, 0), {}
    for hook in root._forward_pre_hooks.values():
        args, kwargs = hook(root, args, kwargs)
    assert args[0]["x"].dtype == expected
    # the wrapped module's outputs: only "loss" keeps its graph (FairScale's forward itself needs CUDA)
    out = {"loss": params[0].sum(), "aux": params[0].mean()}
    for hook in model._forward_hooks.values():
        out = hook(model, args, out)
    assert out["loss"].requires_grad and not out["aux"].requires_grad


def test_unused_root_parameters_get_zero_gradients_that_are_dropped_before_the_step(one_process_group):
    """FairScale frees a root parameter only in its post-backward hook: the forward hook makes the
    loss reach every trainable root parameter (+ 0 * p[0], same value), and the strategy drops the
    gradients that stayed exactly zero (no micro-batch of the step used the parameter) before
    clipping, so the optimizer skips them as on one device."""
    strategy = _cpu_strategy()
    model = Toy()
    strategy.wrap(model)
    head, embed = model.head, model.embed
    assert {id(p) for p in strategy._root_params} == {id(p) for p in [*embed.parameters(), *head.parameters()]}
    hook = next(iter(model._forward_hooks.values()))

    def micro_batch(use_head: bool) -> None:
        h = embed(torch.rand(2, 3))  # (the wrapped blocks' forward needs CUDA; they are not root parameters)
        loss = h.pow(2).mean() + (head(h).sum() if use_head else 0.0)
        out = hook(model, (), {"loss": loss, "aux": h.mean()})
        assert torch.equal(out["loss"], loss) and not out["aux"].requires_grad
        out["loss"].backward()

    params = list(model.parameters())
    micro_batch(use_head=False)
    assert head.weight.grad is not None and torch.count_nonzero(head.weight.grad) == 0  # reached, zero
    strategy._drop_foreign_grads(model, params)
    assert head.weight.grad is None and head.bias.grad is None and torch.count_nonzero(embed.weight.grad) > 0
    # accumulation: a parameter used by any micro-batch of the step keeps its (real) gradient
    model.zero_grad(set_to_none=True)
    micro_batch(use_head=False)
    micro_batch(use_head=True)
    strategy._drop_foreign_grads(model, params)
    assert torch.count_nonzero(head.weight.grad) > 0 and torch.count_nonzero(embed.weight.grad) > 0
    # gradients outside the stepped group are dropped as before
    model.zero_grad(set_to_none=True)
    micro_batch(use_head=True)
    strategy._drop_foreign_grads(model, list(head.parameters()))
    assert embed.weight.grad is None and head.weight.grad is not None
    # a frozen root parameter is left alone; without a graph (evaluation) the loss is untouched
    model.zero_grad(set_to_none=True)
    head.requires_grad_(False)
    micro_batch(use_head=False)
    assert head.weight.grad is None
    with torch.no_grad():
        loss = embed(torch.rand(1, 3)).sum()
        assert hook(model, (), {"loss": loss})["loss"] is loss


def test_bf16_gradient_accumulation_is_refused(monkeypatch):
    recipe = {
        "strategy": {"class_path": "FairScaleFSDP", "init_args": {"compute_dtype": "bf16"}},
        "stages": [
            {"class_path": "TrainTokenizer", "init_args": {"trainer": {"grad_accum": 1}}},
            {"class_path": "TrainGenerator", "init_args": {"trainer": {"grad_accum": 4}}},
        ],
    }
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(RecipeError, match=r"r\.yaml: stages\[1\]\.init_args\.trainer\.grad_accum: .*grad_accum 1"):
        check_recipe(recipe, "r.yaml")
    recipe["strategy"]["init_args"]["compute_dtype"] = "fp32"  # fp32 accumulates through no_sync
    check_recipe(recipe, "r.yaml")
    del recipe["strategy"]["init_args"]  # bf16 is the default compute dtype
    with pytest.raises(RecipeError, match="grad_accum"):
        check_recipe(recipe, "r.yaml")
    with pytest.raises(RuntimeError, match="cannot accumulate"):
        _cpu_strategy("bf16").no_sync(nn.Linear(1, 1))
    assert BF16_ACCUM in str(RecipeError(BF16_ACCUM))
