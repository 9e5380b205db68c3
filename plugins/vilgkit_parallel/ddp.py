"""Data parallel: every rank holds the whole model; gradients are averaged (torch DDP).

The training engine calls ``module.training_losses(batch, group, step)``, not ``forward``. DDP only
synchronises gradients for work that goes through its ``forward``, so the wrapper routes the
Trainable methods through it (:class:`TrainableDDP`).
"""
from __future__ import annotations

import contextlib
from typing import Any

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vilgkit.registry import PARALLEL_STRATEGIES
from vilgkit_parallel.common import DistributedStrategy


class _MethodRouter(nn.Module):
    """``forward(method, *args)`` calls ``inner.<method>(*args)`` (so DDP sees every call)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.inner, method)(*args, **kwargs)


class TrainableDDP(DistributedDataParallel):
    """DDP whose ``training_losses`` / ``validation_metrics`` / ``forward`` go through DDP's forward."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return super().forward("forward", *args, **kwargs)

    def training_losses(self, batch: Any, group: str, step: int) -> Any:
        return super().forward("training_losses", batch, group, step)

    def validation_metrics(self, batch: Any) -> Any:
        return self.module.inner.validation_metrics(batch)

    def optimizer_groups(self) -> Any:
        return self.module.inner.optimizer_groups()

    def blocks(self) -> list[nn.Module]:
        fn = getattr(self.module.inner, "blocks", None)
        return list(fn()) if callable(fn) else []


@PARALLEL_STRATEGIES.register_module()
class DDP(DistributedStrategy):
    """Distributed data parallel over all ranks (gloo on CPU, NCCL on CUDA).

    Args:
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        find_unused_parameters: needed when an optimizer group's loss leaves parameters unused
            (e.g. the autoencoder while the VQGAN discriminator steps).
        bucket_cap_mb: gradient all-reduce bucket size.
        timeout_s: collective timeout.
    """

    def __init__(
        self,
        device: str = "auto",
        find_unused_parameters: bool = False,
        bucket_cap_mb: float = 25.0,
        timeout_s: float = 1800.0,
    ) -> None:
        super().__init__(device=device, timeout_s=timeout_s)
        if bucket_cap_mb <= 0:
            raise ValueError(f"bucket_cap_mb must be positive, got {bucket_cap_mb}")
        self.find_unused_parameters = bool(find_unused_parameters)
        self.bucket_cap_mb = float(bucket_cap_mb)

    def wrap(self, model: nn.Module) -> nn.Module:
        self.setup()
        if any(p.is_meta for p in model.parameters()):
            raise ValueError("DDP replicates a materialised model: build it on the CPU, not on 'meta'")
        model = model.to(self.device)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return TrainableDDP(
            _MethodRouter(model),
            device_ids=ids,
            find_unused_parameters=self.find_unused_parameters,
            bucket_cap_mb=self.bucket_cap_mb,
        )

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model.module.inner if isinstance(model, TrainableDDP) else model

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager:
        return model.no_sync() if isinstance(model, DistributedDataParallel) else contextlib.nullcontext()

    def layout(self):
        from vilgkit.interfaces import StrategyLayout

        return StrategyLayout(sharding="none")
