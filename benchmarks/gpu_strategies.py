"""GPU check of the sharded strategies on the toy model (run with torchrun on a CUDA machine).

FairScaleFSDP (fp32 compute, parameter offload) and FSDP (CPU offload, full recompute, fp32) train
the toy model for 4 steps and must match single-device training on the same GPU; then a bf16 FSDP
run reports its losses. Prints one JSON line per strategy.

    torchrun --nproc-per-node 1 benchmarks/gpu_strategies.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "parallel"))
import toy  # noqa: E402

from vilgkit_parallel import FSDP, FairScaleFSDP  # noqa: E402
from vilgkit_parallel.single import SingleDevice  # noqa: E402


def run(strategy, steps: int = 4) -> list[float]:
    strategy.setup()
    model = strategy.wrap(toy.make_model())
    opt = strategy.build_optimizer(list(model.parameters()), toy.adamw)
    return toy.train(model, strategy, opt, range(steps), 2, strategy.rank, strategy.world_size)


def main() -> None:
    single = SingleDevice("cuda")
    model = toy.make_model().cuda()
    ref = toy.train(model, single, toy.adamw(model.parameters()), range(4), 2, 0, 1)
    results = {"single": ref}
    for name, strategy in [
        ("fairscale_fp32_offload", FairScaleFSDP(offload=True, compute_dtype="fp32", activation_checkpointing="full")),
        ("fsdp_offload_recompute", FSDP(device="cuda", cpu_offload=True, activation_checkpointing="full")),
        ("fsdp_bf16_selective", FSDP(device="cuda", param_dtype="bf16", activation_checkpointing="selective")),
    ]:
        try:
            results[name] = run(strategy)
        except Exception as err:  # noqa: BLE001 — report and go on
            results[name] = f"{type(err).__name__}: {err}"
    for name, losses in results.items():
        diff = (max(abs(a - b) for a, b in zip(losses, ref)) if isinstance(losses, list) else None)
        print(json.dumps({"strategy": name, "losses": losses, "max_abs_diff_vs_single": diff}))


if __name__ == "__main__":
    main()
