"""The training contract: what the engine needs from anything it trains.

A trainable module's ``forward(batch, group, step)`` is its training pass for one optimizer group;
``training_losses(outputs, batch, group, step)`` turns what it returned into named losses. The
engine calls ``forward`` through the strategy's wrapper (``wrapped(batch, group, step)``), so the
hooks of DDP (gradient sync) and FSDP (gathering shards) run without any patching. VQGAN has two
groups (``"autoencoder"`` then ``"discriminator"``); the generator has one.
"""

from __future__ import annotations

from abc import ABC
from typing import Any

import torch
from torch import nn


class Trainable(ABC):  # noqa: B024 (an interface whose every method has a default)
    """Mixin for ``nn.Module`` subclasses the training engine can drive.

    The engine, for every optimizer group name in :meth:`optimizer_groups` order, calls the
    module's ``forward(batch, group, step)`` (through the strategy's wrapper), then
    :meth:`training_losses` on its outputs, back-propagates ``losses["loss"]`` and steps that
    group's optimizer. Other keys of the losses are logged.

    Everything that runs parameters belongs in ``forward``: a sharding strategy only gathers them
    there. Losses that need parameters themselves (a discriminator's verdict, VQGAN's adaptive
    weight, an end-to-end reconstructor) are therefore outputs of ``forward``; a module whose
    ``forward`` already returns its named losses keeps the default :meth:`training_losses`.
    """

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        """Ordered ``name → parameters``; one group named ``"main"`` by default."""
        assert isinstance(self, nn.Module)
        return {"main": [p for p in self.parameters() if p.requires_grad]}

    def training_losses(self, outputs: Any, batch: Any, group: str, step: int) -> dict[str, torch.Tensor]:
        """Named losses of ``forward``'s ``outputs`` for optimizer ``group`` at global ``step``;
        ``"loss"`` is back-propagated. The default: ``outputs`` is that dict already."""
        if not isinstance(outputs, dict) or "loss" not in outputs:
            raise TypeError(
                f"{type(self).__name__}.forward returned {type(outputs).__name__}, not a dict with "
                "'loss': define training_losses(outputs, batch, group, step)"
            )
        return outputs

    def validation_metrics(self, batch: Any) -> dict[str, float]:
        """Optional evaluation numbers on a held-out batch (no gradients)."""
        return {}
