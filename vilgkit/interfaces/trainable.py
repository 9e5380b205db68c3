"""The training contract: what the engine needs from anything it trains.

A trainable module turns a batch into named losses, per optimizer group, in a fixed stepping order.
VQGAN has two groups (``"autoencoder"`` then ``"discriminator"``); the generator has one.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn


class Trainable(ABC):
    """Mixin for ``nn.Module`` subclasses the training engine can drive.

    The engine, for every optimizer group name in :meth:`optimizer_groups` order, calls
    :meth:`training_losses` with that group's name, back-propagates ``losses["loss"]`` and steps that
    group's optimizer. Other keys of the returned dict are logged.
    """

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        """Ordered ``name → parameters``; one group named ``"main"`` by default."""
        assert isinstance(self, nn.Module)
        return {"main": [p for p in self.parameters() if p.requires_grad]}

    @abstractmethod
    def training_losses(self, batch: Any, group: str, step: int) -> dict[str, torch.Tensor]:
        """Losses for optimizer ``group`` at global ``step``; ``"loss"`` is back-propagated."""

    def validation_metrics(self, batch: Any) -> dict[str, float]:
        """Optional evaluation numbers on a held-out batch (no gradients)."""
        return {}
