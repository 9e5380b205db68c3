"""Training-engine overhead and checkpoint I/O.

1. Steps/s of the Trainer against a bare PyTorch loop doing the same work (AdamW, backward,
   clipping, one sync per step) on an MLP, same data, same settings: the difference is the engine's
   overhead (loader, non-finite checks, metrics, routing through the wrapped module).
2. Checkpoint save (write + fsync + SHA-256 manifest + atomic rename) and load (hash verify +
   safetensors + weights-only optimizer) of a model with ``--ckpt-params`` parameters.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_trainer.py [--steps 200] [--ckpt-params 25e6]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from vilgkit.engine.checkpoint import CheckpointManager
from vilgkit.engine.config import TrainerConfig
from vilgkit.engine.trainer import Trainer
from vilgkit.interfaces import Trainable
from vilgkit_parallel.single import SingleDevice


class Data(Dataset):
    def __init__(self, n: int, dim: int) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, dim, generator=gen)
        self.y = torch.randn(n, generator=gen)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i]}


class MLP(nn.Module, Trainable):
    def __init__(self, dim: int, width: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(dim, width)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(width, width)]
        self.net = nn.Sequential(*layers, nn.GELU(), nn.Linear(width, 1))

    def forward(self, batch: dict, group: str = "main", step: int = 0) -> torch.Tensor:
        return self.net(batch["x"]).squeeze(-1)

    def training_losses(self, outputs: torch.Tensor, batch: dict, group: str, step: int) -> dict:
        return {"loss": torch.mean((outputs - batch["y"]) ** 2)}


def bare_loop(model: MLP, data: Data, steps: int, batch: int, lr: float) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, drop_last=True)
    it = iter(loader)
    start = time.perf_counter()
    for _ in range(steps):
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            b = next(it)
        opt.zero_grad(set_to_none=True)
        loss = model.training_losses(model(b, "main", 0), b, "main", 0)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss.item()
    return steps / (time.perf_counter() - start)


def engine_loop(model: MLP, data: Data, steps: int, batch: int, lr: float, out: Path) -> tuple[float, float]:
    """``(steps/s inside the loop, steps/s of the whole fit())``: the loop rate comes from the
    Trainer's own ``samples_per_s`` windows (between log lines), so it excludes set-up and the
    final checkpoint + export that ``fit()`` also does."""
    cfg = TrainerConfig(steps=steps, batch_size=batch, lr=lr, warmup_steps=0, log_every=10, checkpoint_every=0)
    trainer = Trainer(model, data, out, SingleDevice("cpu"), cfg, progress=False, tensorboard=False)
    start = time.perf_counter()
    trainer.fit()
    whole = steps / (time.perf_counter() - start)
    rates = [json.loads(line)["samples_per_s"] / batch for line in (out / "metrics.jsonl").read_text().splitlines()]
    return sorted(rates)[len(rates) // 2], whole


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ckpt-params", type=float, default=25e6)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    data = Data(4096, 64)
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up: lazy imports (torch._dynamo via the optimizer, numpy.random...) are paid here, not timed
        bare_loop(MLP(64, args.width, args.depth), data, 5, args.batch, 1e-3)
        engine_loop(MLP(64, args.width, args.depth), data, 5, args.batch, 1e-3, Path(tmp) / "warm")
        bares, engines, wholes = [], [], []
        for r in range(args.repeats):  # interleaved, so load changes hit both alike; medians reported
            torch.manual_seed(0)
            bares.append(bare_loop(MLP(64, args.width, args.depth), data, args.steps, args.batch, 1e-3))
            torch.manual_seed(0)
            loop, whole = engine_loop(
                MLP(64, args.width, args.depth), data, args.steps, args.batch, 1e-3, Path(tmp) / f"e{r}"
            )
            engines.append(loop)
            wholes.append(whole)
        med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
        bare, engine, whole = med(bares), med(engines), med(wholes)
        print(
            f"MLP {args.depth}x{args.width}, batch {args.batch}, {args.steps} steps, median of {args.repeats}: "
            f"bare loop {bare:.1f} steps/s, Trainer loop {engine:.1f} steps/s "
            f"({(bare / engine - 1) * 100:+.1f}% time per step); Trainer fit() incl. set-up and final "
            f"checkpoint {whole:.1f} steps/s"
        )

        width = int((args.ckpt_params / 4) ** 0.5)
        model = nn.Sequential(*[nn.Linear(width, width) for _ in range(4)])
        opt = torch.optim.AdamW(model.parameters())
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        n = sum(p.numel() for p in model.parameters())
        state = {"model": model, "optimizers": {"main": opt}, "schedulers": {}, "trainer": {"step": 1}, "rng": {}}
        manager = CheckpointManager(Path(tmp) / "ckpt", SingleDevice("cpu"), keep=1)
        start = time.perf_counter()
        path = manager.save(1, state)
        save_s = time.perf_counter() - start
        size = sum(f.stat().st_size for f in path.iterdir())
        start = time.perf_counter()
        manager.load(path, {**state, "trainer": {}, "rng": {}})
        load_s = time.perf_counter() - start
        print(
            f"checkpoint of {n / 1e6:.1f}M params + AdamW ({size / 2**20:.0f} MiB): save {save_s:.2f} s "
            f"({size / 2**20 / save_s:.0f} MiB/s), verify+load {load_s:.2f} s ({size / 2**20 / load_s:.0f} MiB/s)"
        )


if __name__ == "__main__":
    main()
