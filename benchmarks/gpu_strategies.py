"""GPU check of the sharded strategies on the toy model (run with torchrun on a CUDA machine).

FairScaleFSDP (fp32 compute, parameter offload) and FSDP (CPU offload, full recompute, fp32) train
the toy model for 4 steps and must match single-device training on the same GPU; then bf16 runs
(FairScale and FSDP) report their losses, and a FairScale checkpoint saved after 2 steps must
resume into a fresh model with the same losses and final weights as the uninterrupted run.
Variants: a root parameter no loss uses (must not move), bf16 with and without ``no_sync`` (the
second shows FairScale's offload keeping only the last micro-batch's gradient). Prints one JSON
line per configuration; a failing one prints its error instead (``--device cpu`` is a smoke test:
FairScale there reports its refusal). Results: docs/distributed.md, "GPU results".

    torchrun --nproc-per-node 1 benchmarks/gpu_strategies.py [--device cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "parallel"))
import toy  # noqa: E402

from vilgkit_parallel import FSDP, FairScaleFSDP  # noqa: E402
from vilgkit_parallel.single import SingleDevice  # noqa: E402


def wrapped_toy(strategy, inner):
    """``(wrapped model, optimizer)`` for the toy model ``inner`` under ``strategy``."""
    model = strategy.wrap(inner)
    return model, strategy.build_optimizer(list(model.parameters()), toy.adamw)


def run(strategy, steps: int = 4, accum: int = 2, sync_every_micro_batch: bool = False, spare: bool = False) -> list:
    strategy.setup()
    if sync_every_micro_batch:  # reduce after every micro-batch (bypasses the strategy's bf16 refusal)
        strategy.no_sync = lambda _model: contextlib.nullcontext()
    inner = toy.make_model()
    if spare:  # a root parameter no loss uses: must get no update (on one device its gradient is None)
        inner.spare = torch.nn.Linear(toy.HIDDEN, 3)
        before = inner.spare.weight.detach().clone()
    model, opt = wrapped_toy(strategy, inner)
    losses = toy.train(model, strategy, opt, range(steps), accum, strategy.rank, strategy.world_size)
    if spare:
        moved = float((strategy.state_dict(model)["spare.weight"] - before).abs().max())
        losses.append(f"spare moved by {moved}")
    return losses


def fairscale_resume(make, steps: int = 4) -> dict:
    """Train ``steps`` steps with a checkpoint after half of them; a fresh model (other init) loads it
    and continues. The continuation's losses and final weights must equal the uninterrupted run's."""
    half = steps // 2
    strategy = make()
    inner = toy.make_model()
    model, opt = wrapped_toy(strategy, inner)
    args = (2, strategy.rank, strategy.world_size)
    first = toy.train(model, strategy, opt, range(half), *args)
    directory = Path(tempfile.mkdtemp()) / "step"
    strategy.save_checkpoint(directory, {"model": model, "optimizers": {"main": opt}, "trainer": {"step": half}})
    rest = toy.train(model, strategy, opt, range(half, steps), *args)
    final = strategy.state_dict(model)

    again = make()
    inner2 = toy.make_model(seed=123)  # everything must come from the file
    model2, opt2 = wrapped_toy(again, inner2)
    trainer: dict = {}
    again.load_checkpoint(directory, {"model": model2, "optimizers": {"main": opt2}, "trainer": trainer})
    resumed = toy.train(model2, again, opt2, range(half, steps), *args)
    final2 = again.state_dict(model2)
    return {
        "losses": first + rest,
        "resumed_losses": resumed,
        "trainer": trainer,
        "max_abs_diff_losses": max(abs(a - b) for a, b in zip(rest, resumed)),
        "max_abs_diff_weights": max(float((final[k] - final2[k]).abs().max()) for k in final),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    device = parser.parse_args().device
    single = SingleDevice(device)
    model = toy.make_model().to(device)
    ref = toy.train(model, single, toy.adamw(model.parameters()), range(4), 2, 0, 1)
    results = {"single": ref}
    for name, make, kwargs in [  # built inside the try: FairScaleFSDP refuses at construction without CUDA
        ("fairscale_fp32_offload", lambda: FairScaleFSDP(offload=True, compute_dtype="fp32"), {}),
        (
            "fairscale_fp32_offload_unused_param",
            lambda: FairScaleFSDP(offload=True, compute_dtype="fp32"),
            {"spare": True},
        ),
        (
            "fairscale_bf16_offload_unused_param",
            lambda: FairScaleFSDP(offload=True, compute_dtype="bf16"),
            {"spare": True, "accum": 1},
        ),
        (
            "fairscale_fp32_offload_recompute",
            lambda: FairScaleFSDP(offload=True, compute_dtype="fp32", activation_checkpointing="full"),
            {},
        ),
        (
            "fairscale_fp32_gpu_recompute",
            lambda: FairScaleFSDP(offload=False, compute_dtype="fp32", activation_checkpointing="full"),
            {},
        ),
        ("fairscale_bf16_offload_accum1", lambda: FairScaleFSDP(offload=True, compute_dtype="bf16"), {"accum": 1}),
        ("fairscale_bf16_offload_accum2", lambda: FairScaleFSDP(offload=True, compute_dtype="bf16"), {}),  # refused
        (
            "fairscale_bf16_offload_sync",
            lambda: FairScaleFSDP(offload=True, compute_dtype="bf16"),
            {"sync_every_micro_batch": True},
        ),
        ("fairscale_bf16_gpu", lambda: FairScaleFSDP(offload=False, compute_dtype="bf16"), {"accum": 1}),
        ("fsdp_offload_recompute", lambda: FSDP(device=device, cpu_offload=True, activation_checkpointing="full"), {}),
        (
            "fsdp_bf16_selective",
            lambda: FSDP(device=device, param_dtype="bf16", activation_checkpointing="selective"),
            {},
        ),
    ]:
        try:
            results[name] = run(make(), **kwargs)
        except Exception as err:  # noqa: BLE001 — report and go on
            traceback.print_exc()
            results[name] = f"{type(err).__name__}: {err}"
    try:
        resume = fairscale_resume(lambda: FairScaleFSDP(offload=True, compute_dtype="fp32"))
        print(json.dumps({"check": "fairscale_save_resume", **resume}))
    except Exception as err:  # noqa: BLE001 — report and go on
        traceback.print_exc()
        print(json.dumps({"check": "fairscale_save_resume", "error": f"{type(err).__name__}: {err}"}))
    for name, losses in results.items():
        diff = (
            max(abs(a - b) for a, b in zip(losses, ref) if isinstance(a, float)) if isinstance(losses, list) else None
        )
        print(json.dumps({"strategy": name, "losses": losses, "max_abs_diff_vs_single": diff}))


if __name__ == "__main__":
    main()
