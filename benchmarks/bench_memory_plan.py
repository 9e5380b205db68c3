"""Plan vs measured peak memory of one training step of the UnifiedTransformer (fp32, AdamW).

CPU: each configuration runs in a fresh subprocess; "measured" is the growth of the peak RSS
(``ru_maxrss``) from before the model is built to after two optimizer steps. GPU: the CUDA
allocator's peak (``max_memory_allocated``). "plan" is ``vilgkit.planning.estimate_memory`` for an
unsharded fp32 layout (params 4P + grads 4P + AdamW 8P + activations) — the same arithmetic
``vilgkit plan`` applies per shard.

    python benchmarks/bench_memory_plan.py [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

CONFIGS = [  # hidden, layers, heads, grid, text_len, batch, recompute
    (256, 4, 4, 16, 32, 8, "none"),
    (512, 4, 8, 16, 32, 8, "none"),
    (512, 4, 8, 16, 32, 8, "full"),
    (1024, 2, 16, 16, 32, 4, "none"),
]


def child(cfg: list, device: str) -> dict:
    import torch

    sys.path.insert(0, "plugins")
    from bench_model import build_generator  # this folder is on sys.path as a script

    from vilgkit.interfaces import StrategyLayout
    from vilgkit.planning import estimate_memory
    from vilgkit_parallel.activation import apply_activation_checkpointing

    hidden, layers, heads, grid, text_len, batch, recompute = cfg
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = build_generator(hidden, layers, heads, text_len, grid).to(device)
    apply_activation_checkpointing(model.blocks(), recompute)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(4, 1000, (batch, text_len), device=device)
    ids[:, 0], ids[:, -1] = 2, 3
    data = {
        "text_ids": ids,
        "text_mask": torch.ones_like(ids, dtype=torch.bool),
        "codes": torch.randint(0, 1024, (batch, grid, grid), device=device),
    }
    for _ in range(2):
        loss = model(data).losses["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    measured = (
        torch.cuda.max_memory_allocated()
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
    )
    tokens = batch * 2 * (text_len + grid * grid)
    plan = estimate_memory(model, StrategyLayout(recompute=recompute), tokens)
    return {
        "cfg": cfg,
        "params": sum(p.numel() for p in model.parameters()),
        "plan": plan.device_total,
        "plan_activations": plan.activations,
        "measured": int(measured),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", default=None)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child), args.device)))
        return
    print(f"device {args.device}; MiB; plan = 16 B/param + activations (fp32, AdamW)")
    print(
        f"{'hidden':>6} {'layers':>6} {'tokens':>7} {'recompute':>9} "
        f"{'params(M)':>9} {'plan':>8} {'measured':>9} {'ratio':>6}"
    )
    for cfg in CONFIGS:
        out = subprocess.run(
            [sys.executable, __file__, "--device", args.device, "--child", json.dumps(cfg)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        h, L, _, g, t, b, rc = r["cfg"]
        print(
            f"{h:>6} {L:>6} {b * 2 * (t + g * g):>7} {rc:>9} {r['params'] / 1e6:>9.1f} {r['plan'] / 2**20:>8.0f} "
            f"{r['measured'] / 2**20:>9.0f} {r['measured'] / r['plan']:>6.2f}"
        )


if __name__ == "__main__":
    main()
