"""Toy data, Trainables and a ``TrainToy`` stage for the engine tests (put this folder on PYTHONPATH).

Nothing here is registered: recipes name these classes by dotted path, so the conformance suite
never picks them up.
"""

from __future__ import annotations

import json
import time

import torch
from torch import nn
from torch.utils.data import Dataset

from vilgkit.engine.checkpoint import load_model_weights
from vilgkit.engine.config import TrainerConfig
from vilgkit.engine.trainer import Trainer
from vilgkit.interfaces import RunContext, Stage, Trainable

NOISE = 0.1  # the optimum mean squared error of the regression is NOISE**2


class ToyRegressionData(Dataset):
    """``y = x·w + b + NOISE·ε`` with fixed ``w``, ``b``; samples are dicts with ``x``, ``y``, ``index``."""

    def __init__(self, size: int = 256, dim: int = 4, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.w = torch.randn(dim, generator=gen)
        self.b = torch.randn((), generator=gen)
        self.x = torch.randn(size, dim, generator=gen)
        self.y = self.x @ self.w + self.b + NOISE * torch.randn(size, generator=gen)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i], "index": i}


class ToyRegression(nn.Module, Trainable):
    """Linear regression, optionally through a small MLP with dropout (exercises the RNG restore)."""

    def __init__(self, dim: int = 4, hidden: int = 0, dropout: float = 0.0, delay: float = 0.0) -> None:
        super().__init__()
        self.net = (
            nn.Linear(dim, 1)
            if hidden == 0
            else nn.Sequential(
                nn.Linear(dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1)
            )
        )
        self.delay = delay
        self.calls: list[tuple[str, int]] = []

    def forward(self, batch: dict, group: str = "main", step: int = 0) -> torch.Tensor:
        """The predictions for ``batch["x"]``."""
        return self.net(batch["x"]).squeeze(-1)

    def training_losses(self, outputs: torch.Tensor, batch: dict, group: str, step: int) -> dict[str, torch.Tensor]:
        self.calls.append((group, step))
        if self.delay:
            time.sleep(self.delay)
        loss = torch.mean((outputs - batch["y"]) ** 2)
        return {"loss": loss, "mae": (outputs - batch["y"]).abs().mean()}

    def validation_metrics(self, batch: dict) -> dict[str, float]:
        return {"mse": torch.mean((self(batch) - batch["y"]) ** 2).item(), "training": float(self.training)}


class TrainToy(Stage):
    """Trains :class:`ToyRegression` on the recipe's ``data``; writes ``summary.json`` (final MSE).

    Args:
        trainer: training settings.
        dim: input features.
        hidden: MLP width (0: plain linear regression).
        dropout: dropout of the MLP.
        delay: seconds slept per micro-batch (to make a run slow enough to kill).
        init_from: start from the exported weights of an earlier stage (its name) or a stage folder.
        name: stage name.
    """

    def __init__(
        self,
        trainer: TrainerConfig = TrainerConfig(),
        dim: int = 4,
        hidden: int = 0,
        dropout: float = 0.0,
        delay: float = 0.0,
        init_from: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        self.init_from = init_from
        self.trainer = trainer
        self.dim, self.hidden, self.dropout, self.delay = dim, hidden, dropout, delay

    def run(self, ctx: RunContext) -> dict:
        data = ctx.component("data")
        module = ToyRegression(self.dim, self.hidden, self.dropout, self.delay)
        start = {}
        if self.init_from:
            load_model_weights(module, ctx.source_dir(self.init_from) / "model.safetensors")
            start = {"init_weight_sum": float(sum(p.detach().sum() for p in module.parameters()))}
        metrics = Trainer.for_stage(ctx, self, module, data, self.trainer, progress=False).fit(ctx.resume)
        module.eval()
        with torch.no_grad():
            mse = torch.mean((module({"x": data.x}) - data.y) ** 2).item()
        summary = {"final_mse": mse, **start, **metrics}
        (ctx.stage_dir(self.name) / "summary.json").write_text(json.dumps(summary))
        return summary
