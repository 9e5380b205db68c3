"""A tiny Trainable transformer-ish model and a training loop that mirrors the engine's Trainer
(micro-batches with ``no_sync`` on all but the last, clipping, AdamW) for the distributed tests."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vilgkit.interfaces import Trainable

VOCAB, HIDDEN, LAYERS, SEQ, GLOBAL_BATCH = 32, 16, 3, 8, 8


class ToyBlock(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, 4 * hidden)
        self.fc2 = nn.Linear(4 * hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class ToyModel(nn.Module, Trainable):
    hidden_size, num_layers, num_heads = HIDDEN, LAYERS, 1

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.layers = nn.ModuleList(ToyBlock(HIDDEN) for _ in range(LAYERS))
        self.norm = nn.LayerNorm(HIDDEN)
        self.head = nn.Linear(HIDDEN, VOCAB, bias=False)

    def blocks(self) -> list[nn.Module]:
        return list(self.layers)

    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.1)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, batch: Any, group: str = "main", step: int = 0) -> torch.Tensor:
        """Next-token logits of ``batch["ids"]`` (all but the last position)."""
        x = self.embed(batch["ids"][:, :-1])
        for block in self.layers:
            x = block(x)
        return self.head(self.norm(x))

    def training_losses(self, outputs: torch.Tensor, batch: Any, group: str, step: int) -> dict[str, torch.Tensor]:
        loss = F.cross_entropy(outputs.reshape(-1, VOCAB), batch["ids"][:, 1:].reshape(-1))
        return {"loss": loss}


def global_batch(step: int) -> torch.Tensor:
    """The same global batch for every world size (a function of the step only)."""
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ), generator=g)


def make_model(seed: int = 0) -> ToyModel:
    torch.manual_seed(seed)
    model = ToyModel()
    model.init_weights()
    return model


def train(model, strategy, opt, steps: range, grad_accum: int, rank: int, world: int) -> list[float]:
    """Steps of the engine's loop; returns the global mean loss per step.

    As in the trainer, the training pass is the wrapped model's call (its hooks run) and the
    losses come from the unwrapped module's ``training_losses``.
    """
    unwrap = getattr(strategy, "unwrap", None)
    trainable = unwrap(model) if callable(unwrap) else model
    losses = []
    for step in steps:
        ids = global_batch(step).chunk(world)[rank].to(strategy.device)
        micro = ids.chunk(grad_accum)
        total = torch.zeros((), device=strategy.device)
        model.zero_grad(set_to_none=True)
        for i, chunk in enumerate(micro):
            ctx = strategy.no_sync(model) if i < len(micro) - 1 else contextlib.nullcontext()
            with ctx:
                batch = {"ids": chunk}
                out = trainable.training_losses(model(batch, "main", step), batch, "main", step)
                loss = out["loss"] / len(micro)
                loss.backward()
            total += loss.detach()
        strategy.clip_grad_norm_(model, list(model.parameters()), 1.0)
        opt.step()
        losses.append(float(strategy.all_reduce_mean(total)))
    return losses


def adamw(params):
    return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01)
