"""Train the toy regression with the engine's Trainer under a strategy named on the command line.

    torchrun --nproc-per-node 2 engine_ddp_train.py DDP OUT_DIR STEPS RESUME(0|1)

The batch per rank is 16 // world_size, so every run sees the same global batches.
"""

import json
import sys
from pathlib import Path

import torch
from vilgkit_engine_toy import ToyRegression, ToyRegressionData

import vilgkit_parallel  # noqa: F401  (registers the strategies)
from vilgkit.engine.config import TrainerConfig
from vilgkit.engine.trainer import Trainer
from vilgkit.registry import PARALLEL_STRATEGIES


def main() -> None:
    kind, out, steps, resume = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
    torch.manual_seed(0)
    module = ToyRegression(4, hidden=16)
    strategy = PARALLEL_STRATEGIES.get(kind)(device="cpu")
    strategy.setup()
    cfg = TrainerConfig(
        steps=steps,
        batch_size=16 // strategy.world_size,
        lr=0.01,
        warmup_steps=2,
        log_every=3,
        checkpoint_every=3,
        grad_accum=2,
    )
    metrics = Trainer(module, ToyRegressionData(128), out, strategy, cfg, progress=False, tensorboard=False).fit(resume)
    if strategy.is_main:
        (out / "final_metrics.json").write_text(json.dumps(metrics))


if __name__ == "__main__":
    main()
